"""The soak harness with 3 kills (the full 20 are a benchmark: docs/results/reliability.md)."""

import pytest

from benchmarks import soak


@pytest.mark.slow  # a minute on two cores; test_train's kill-and-resume test covers the basics
def test_three_kills_leave_the_run_unchanged(tmp_path):
  result = soak.main(["--kills=3", f"--workdir={tmp_path}"])
  assert result["kills"] == result["resumes"] == 3
  assert result["kills_during_save"] >= 1  # the first kill is aimed at a save in flight
  assert result["steps_replayed"] > 0  # each resume went back to a checkpoint
  assert result["mismatches"] == 0
  log = (tmp_path / "train.log").read_text()
  assert log.count("soak: kill") == 3
