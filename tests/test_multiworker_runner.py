"""Every source's pipeline and tokenize_shards on worker processes, as on a cluster runner.

Beam's FnApiRunner with --direct_running_mode=multi_processing pickles the pipeline's functions to
separate Python processes and gathers their counters back, as Dataflow, Flink or Spark do; each
run must give the documents and counters of the same run in this process. The inputs and flags
are the demo's (configs/mini.py's recipe over examples/mini_corpus).
"""

import gzip
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from apache_beam.runners.direct import direct_runner
from conftest import REPO_ROOT

from preprocessing import c4, run, tfds_output, tokenize_shards
from preprocessing.ccnet.language_id import train_language_id

WORKER_PROCESSES = ("--direct_running_mode=multi_processing", "--direct_num_workers=2")
TOKENIZER = REPO_ROOT / "tests" / "data" / "llama-tokenizer" / "tokenizer.model"
SOURCES = ("ccnet", "c4", "github", "wikipedia", "books", "arxiv", "stackexchange")


def outcome(stats: dict, directory: Path) -> dict:
  """What a run must reproduce: its counters (stats.json but for the wall time and the output
  directory) and the documents it wrote, sorted (workers may write them in another order)."""
  lines = []
  for shard in sorted(directory.glob("documents-*.jsonl.gz")):
    with gzip.open(shard, "rt", encoding="utf-8") as f:
      lines += f.read().splitlines()
  return {"stats": {k: v for k, v in stats.items() if k not in ("seconds", "output")},
          "documents": sorted(lines)}


class DemoCorpus:
  """The demo's source pipelines, each run at most once per mode."""

  def __init__(self, recipe, root):
    self.recipe, self.root = recipe, root
    self.corpus = REPO_ROOT / recipe.corpus_dir
    self.runs = {}

  def argv(self, name: str, output) -> list[str]:
    source = self.recipe.sources[name]
    argv = [f"--source={name}", f"--input={self.corpus / source.input}", f"--output={output}",
            "--num_shards=1", *source.flags]
    if name == "ccnet":
      lid_model = self.root / "lid.bin"
      if not lid_model.exists():
        train_language_id(self.corpus / self.recipe.language_id_data, lid_model)
      argv.append(f"--lid_model={lid_model}")
    return argv

  def run(self, name: str, workers: bool) -> tuple[dict, Path]:
    """(stats, output directory) of the source's run, in this process or on worker processes."""
    if (name, workers) not in self.runs:
      output = self.root / ("workers" if workers else "in_process") / name
      stats = run.main(self.argv(name, output) + list(WORKER_PROCESSES if workers else ()))
      self.runs[name, workers] = stats, output
    return self.runs[name, workers]


def _prism_attempt(*args, **kwargs):
  raise AssertionError("Beam's DirectRunner ran the pipeline: it tries Prism first")


@pytest.fixture(scope="module")
def demo(tmp_path_factory, load_config):
  # run_pipeline gives every DirectRunner mode to FnApiRunner itself.
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(direct_runner.DirectRunner, "run_pipeline", _prism_attempt)
    yield DemoCorpus(load_config("mini").recipe, tmp_path_factory.mktemp("multiworker"))


@pytest.mark.parametrize("name", SOURCES)
def test_source_on_worker_processes(demo, name):
  in_process = outcome(*demo.run(name, workers=False))
  # Not an empty run against an empty run.
  assert len(in_process["documents"]) == in_process["stats"]["documents_written"] > 0
  workers = outcome(*demo.run(name, workers=True))
  assert workers["stats"] == in_process["stats"]
  assert workers["documents"] == in_process["documents"]


def test_state_of_the_launching_process_would_be_caught(demo, monkeypatch, tmp_path):
  # A rule changed at run time in this process reaches its own run but not worker processes,
  # which import the module afresh: a pipeline depending on such state differs, and is caught.
  monkeypatch.setattr(c4, "MIN_WORDS_PER_LINE", 8)
  changed = outcome(run.main(demo.argv("c4", tmp_path)), tmp_path)
  workers = outcome(*demo.run("c4", workers=True))
  assert changed["stats"]["dropped"] != workers["stats"]["dropped"]
  assert changed["documents"] != workers["documents"]


def _token_shards(output: Path) -> dict:
  stats = json.loads((output / "stats.json").read_text())
  return {"stats": {k: v for k, v in stats.items() if k not in ("seconds", "output")},
          "index": json.loads((output / "index.json").read_text()),
          "files": {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
                    for path in output.iterdir() if path.name != "stats.json"}}


def test_token_shards_on_worker_processes(demo, tmp_path):
  _, documents = demo.run("github", workers=False)
  argv = [f"--input={documents / 'documents-*'}", f"--tokenizer={TOKENIZER}", "--num_shards=3"]
  tokenize_shards.main([*argv, f"--output={tmp_path / 'in_process'}"])
  # As a command: its DoFn and functions then live in __main__, which workers cannot import, so
  # they travel pickled by value.
  command = subprocess.run([sys.executable, "-m", "preprocessing.tokenize_shards", *argv,
                            f"--output={tmp_path / 'workers'}", *WORKER_PROCESSES],
                           cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
  assert command.returncode == 0, command.stderr[-3000:]
  in_process, workers = _token_shards(tmp_path / "in_process"), _token_shards(tmp_path / "workers")
  assert len(in_process["index"]["shards"]) == 3
  assert in_process["index"]["documents"] == in_process["stats"]["documents_written"] > 0
  assert workers["stats"] == in_process["stats"]
  assert workers["index"] == in_process["index"]
  assert workers["files"] == in_process["files"]  # every shard byte for byte, nothing else


def test_a_tfds_dataset_on_worker_processes(demo, tmp_path):
  argv = demo.argv("github", tmp_path / "in_process")[:-1] + ["--output_format=tfds",
                                                              "--num_shards=3"]
  datasets = {}
  for mode, extra in (("in_process", ()), ("workers", WORKER_PROCESSES)):
    argv[2] = f"--output={tmp_path / mode}"
    run.main([*argv, *extra])
    directory = Path(tfds_output.dataset_dir(str(tmp_path / mode), "github"))
    datasets[mode] = {path.name: (json.loads(path.read_text())["splits"]
                                  if path.name == "dataset_info.json"
                                  else hashlib.sha256(path.read_bytes()).hexdigest())
                      for path in directory.iterdir() if path.name != "stats.json"}
  assert len([name for name in datasets["in_process"] if ".array_record-" in name]) == 3
  assert datasets["workers"] == datasets["in_process"]  # shards byte for byte, the same splits
