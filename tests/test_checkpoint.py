"""Checkpoint integrity: recorded checksums catch truncated, missing and changed files."""

import json

import pytest

from llama_jax.checkpoint import (
    CHECKSUMS,
    CorruptCheckpoint,
    check_storage,
    record_checksums,
    verify_checksums,
)


@pytest.fixture
def step_dir(tmp_path):
  step = tmp_path / "7"
  (step / "state" / "d").mkdir(parents=True)
  (step / "state" / "d" / "chunk").write_bytes(bytes(range(256)) * 64)
  (step / "progress").mkdir()
  (step / "progress" / "metadata").write_text(json.dumps({"batches_drawn": 7}))
  record_checksums(step)
  return step


def test_an_intact_checkpoint_verifies(step_dir):
  verify_checksums(step_dir)
  table = json.loads((step_dir / CHECKSUMS / "0.json").read_text())
  assert sorted(table) == ["progress/metadata", "state/d/chunk"]
  assert not list(step_dir.glob("*.partial"))


@pytest.mark.parametrize("damage,message", [
    (lambda d: d.joinpath("state/d/chunk").write_bytes(bytes(range(256)) * 63), "has 16128 bytes"),
    (lambda d: d.joinpath("state/d/chunk").unlink(), "chunk is missing"),
    (lambda d: d.joinpath(CHECKSUMS, "0.json").unlink(), "never completed its checksums"),
    (lambda d: d.joinpath("state", "x").write_text("x"), "were not there when it was saved"),
])
def test_damage_is_named(step_dir, damage, message):
  damage(step_dir)
  with pytest.raises(CorruptCheckpoint, match=message):
    verify_checksums(step_dir)


def test_one_flipped_bit_is_caught(step_dir):
  path = step_dir / "state" / "d" / "chunk"
  data = bytearray(path.read_bytes())
  data[1000] ^= 0x10
  path.write_bytes(bytes(data))
  with pytest.raises(CorruptCheckpoint, match="chunk has changed"):
    verify_checksums(step_dir)


def test_unwritable_workdir_is_refused(tmp_path):
  (tmp_path / "file").write_text("not a directory")
  with pytest.raises(ValueError, match="is not writable"):
    check_storage(tmp_path / "file" / "run", checkpoint_bytes=10, keep=3)
  # The check writes a file rather than reading permission bits, which root ignores: a directory
  # on a file system nobody can write to (procfs here) is refused for root too.
  with pytest.raises(ValueError, match="is not writable"):
    check_storage("/proc/self", checkpoint_bytes=10, keep=3)


def test_a_workdir_without_room_for_a_checkpoint_is_refused(tmp_path):
  with pytest.raises(ValueError, match=r"one checkpoint of this run takes 1000000.00 GB"):
    check_storage(tmp_path, checkpoint_bytes=10**15, keep=3)
  check_storage(tmp_path, checkpoint_bytes=10, keep=3)


def test_each_process_records_the_files_it_wrote(tmp_path):
  step = tmp_path / "3"
  for process in (0, 1):
    (step / "state" / f"ocdbt.process_{process}").mkdir(parents=True)
    (step / "state" / f"ocdbt.process_{process}" / "data").write_bytes(bytes([process]) * 10)
  (step / "_CHECKPOINT_METADATA").write_text("{}")
  record_checksums(step, process=0)
  with pytest.raises(CorruptCheckpoint, match="1.json is missing"):
    verify_checksums(step)  # process 1 has not recorded its shard yet
  record_checksums(step, process=1)
  verify_checksums(step)
  assert sorted(json.loads((step / CHECKSUMS / "1.json").read_text())) == [
      "state/ocdbt.process_1/data"]
