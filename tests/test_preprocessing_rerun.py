"""A preprocessing run killed midway and run again into the same directory ends with the output of
a clean run (DirectRunner): no shards of an earlier run, no temporary files, no stale stats."""

import gzip
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from preprocessing import run, tokenize_shards

ROOT = Path(__file__).parent.parent
META_MODEL = str(ROOT / "tests" / "data" / "llama-tokenizer" / "tokenizer.model")

# Files a user keeps in an output directory, with names close to the programs' own.
NOT_OURS = {"notes.txt": b"keep me", "documents.jsonl": b"{}\n", "stats.json.bak": b"{}",
            "documents-final.jsonl.gz": b"x", "tokens-00000-of-00003.array_record.bak": b"y",
            "old/documents-00000-of-00001.jsonl.gz": b"z", "old/stats.json": b"{}",
            "old/index.json": b"{}"}


def _write_records(path, count, words):
  path.parent.mkdir(parents=True, exist_ok=True)
  with gzip.open(path, "wt", compresslevel=1) as f:
    for i in range(count):
      f.write(json.dumps({"id": f"{words}-{i}", "url": f"http://{words}.example/{i}",
                          "text": f"Page {i} about the {words}. " * 8, "timestamp": "t"}) + "\n")


def _add_files(directory, files):
  for name, content in files.items():
    (directory / name).parent.mkdir(parents=True, exist_ok=True)
    (directory / name).write_bytes(content)


def _files(directory):
  return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def _stats(directory):
  stats = json.loads((directory / "stats.json").read_text())
  return {k: v for k, v in stats.items() if k not in ("seconds", "output")}


def _documents(directory):
  """Shard names, every line of every shard (WriteToText deals lines to shards at random), stats."""
  lines = []
  for shard in directory.glob("documents-*-of-*.jsonl.gz"):
    with gzip.open(shard, "rt") as f:
      lines += f.read().splitlines()
  return _files(directory), sorted(lines), _stats(directory)


def _run_args(inputs, output, num_shards):
  return ["--source=c4", "--c4_input_format=c4_json", f"--input={inputs}", f"--output={output}",
          f"--num_shards={num_shards}"]


def _start_and_kill(args, directory, timeout=120):
  """Starts `python -m preprocessing.run`, SIGKILLs it once Beam's sink has begun (a temporary
  file, or at least the temporary directory, under `directory`)."""
  process = subprocess.Popen([sys.executable, "-m", "preprocessing.run", *args], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and process.poll() is None:
    if any(directory.glob("beam-temp-documents-*/*")):
      break
    time.sleep(0.01)
  process.send_signal(signal.SIGKILL)
  process.wait()
  return process.returncode


def test_run_killed_and_run_again_gives_the_clean_output(tmp_path):
  inputs = tmp_path / "in" / "c4.json.gz"
  _write_records(inputs, 30000, "river")
  run.main(_run_args(inputs, tmp_path / "clean", 2))

  dirty = tmp_path / "dirty"
  # An earlier complete run with other input and shard counts, and files that are not ours.
  _write_records(tmp_path / "old" / "c4.json.gz", 300, "mountain")
  run.main(_run_args(tmp_path / "old" / "c4.json.gz", dirty, 3))
  _add_files(dirty, {"documents-00000-of-00001.jsonl": b'{"text": "--compression=none"}\n'})
  _add_files(dirty, NOT_OURS)
  # The same command as the clean run, killed while Beam writes.
  assert _start_and_kill(_run_args(inputs, dirty, 2), dirty) == -signal.SIGKILL
  killed = _files(dirty)
  assert any(name.startswith("beam-temp-documents-") for name in killed)
  # The earlier run's stats.json would claim a complete output beside these files.
  assert "stats.json" not in killed
  # A kill during the renames out of the temporary directory: one shard is in place, one is not.
  _add_files(dirty, {"beam-temp-documents-0123abcd/4f2a.documents.jsonl.gz": b"\x1f\x8b\x08\x00"})

  run.main(_run_args(inputs, dirty, 2))
  clean_files, clean_lines, clean_stats = _documents(tmp_path / "clean")
  files, lines, stats = _documents(dirty)
  assert files == sorted(clean_files + [*NOT_OURS, "old"])
  assert len(lines) == 30000 and lines == clean_lines
  assert stats == clean_stats
  for name, content in NOT_OURS.items():
    assert (dirty / name).read_bytes() == content


def _tokenize(inputs, output, num_shards):
  return tokenize_shards.main([f"--input={inputs}", f"--output={output}",
                               f"--tokenizer={META_MODEL}", f"--num_shards={num_shards}"])


def test_tokenize_shards_run_again_gives_the_clean_output(tmp_path):
  _write_records(tmp_path / "docs" / "documents-00000-of-00001.jsonl.gz", 200, "river")
  inputs = tmp_path / "docs" / "documents-*.jsonl.gz"
  _tokenize(inputs, tmp_path / "clean", 3)

  dirty = tmp_path / "dirty"
  _write_records(tmp_path / "old" / "documents-00000-of-00001.jsonl.gz", 50, "mountain")
  _tokenize(tmp_path / "old" / "documents-*.jsonl.gz", dirty, 5)
  _add_files(dirty, NOT_OURS)
  # A rerun killed while writing shards: one shard replaced, one half written under its
  # temporary name; index.json and stats.json are still the earlier run's.
  _add_files(dirty, {"tokens-00000-of-00003.array_record": b"half a shard",
                     "tokens-00001-of-00003.array_record.tmp-5e1f": b"half a shard"})

  _tokenize(inputs, dirty, 3)
  clean = tmp_path / "clean"
  assert _files(dirty) == sorted(_files(clean) + [*NOT_OURS, "old"])
  for name in _files(clean):
    if name != "stats.json":
      assert (dirty / name).read_bytes() == (clean / name).read_bytes(), name
  assert _stats(dirty) == _stats(clean)
  for name, content in NOT_OURS.items():
    assert (dirty / name).read_bytes() == content


def test_input_among_the_outputs_is_not_removed(tmp_path):
  shard = tmp_path / "documents-00000-of-00001.jsonl.gz"
  _write_records(shard, 3, "river")
  content = shard.read_bytes()
  with pytest.raises(SystemExit, match="holds input files"):
    run.main(["--source=c4", "--c4_input_format=c4_json",
              f"--input={tmp_path / 'documents-*.jsonl.gz'}", f"--output={tmp_path}"])
  assert shard.read_bytes() == content
