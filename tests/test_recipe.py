"""llama_jax.recipe (what `make demo` runs) end to end on the shipped corpus, with a smaller model,
fewer steps and fewer benchmark items than configs/mini.py; then again, resuming."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
CORPUS = REPO_ROOT / "examples" / "mini_corpus"
# Table 1's sources, largest share first (equal shares by name): the order the stages run in.
SOURCES = ("ccnet", "c4", "books", "github", "wikipedia", "arxiv", "stackexchange")
STEPS, BATCH = 4, 8
SMALLER = ("--config=configs/mini.py", "--config.model.n_layers=2",
           "--config.model.vocab_size=1000",
           f"--config.train.total_tokens={STEPS * BATCH * 256}", "--config.optim.warmup_steps=1",
           "--config.checkpoint.every_steps=2", "--config.recipe.eval.tasks=piqa,nq_open",
           "--config.recipe.eval.limit=2", "--config.recipe.samples.max_new_tokens=4")


def _recipe(workdir):
  command = [sys.executable, "-m", "llama_jax.recipe", *SMALLER, f"--workdir={workdir}"]
  return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("demo")
  first = _recipe(workdir)
  assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
  return workdir, first


def _row(markdown: str, first_cell: str) -> list[str]:
  for line in markdown.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if cells[0] == first_cell:
      return cells
  raise AssertionError(f"no table row starting with {first_cell!r}")


def test_every_stage_runs_and_the_report_is_printed(demo):
  workdir, first = demo
  stages = re.findall(r"^== \[(\d+)/(\d+)\] (\S+): (.*)$", first.stdout, re.MULTILINE)
  started = [name for _, _, name, what in stages if not what.startswith("done in")]
  assert started == ["language_id", *(f"preprocess/{s}" for s in SOURCES), "tokenizer",
                     *(f"shards/{s}" for s in SOURCES), "train", "eval", "samples", "report"]
  assert f"report: {workdir / 'report.md'}" in first.stdout


def test_report_counts_are_the_pipelines_counts(demo):
  workdir, _ = demo
  report = (workdir / "report.md").read_text()
  for source in SOURCES:
    stats = json.loads((workdir / "documents" / source / "stats.json").read_text())
    row = _row(report, source)
    assert row[1:5] == [f"{stats['documents_read']:,}", f"{stats['documents_written']:,}",
                        f"{sum(stats['dropped'].values()):,}",
                        f"{sum(stats['malformed'].values()):,}"]
    for reason, count in stats["dropped"].items():
      assert f"{reason} {count:,}" in row[5]
    # The shipped corpus holds documents each filter keeps and documents it must drop.
    assert stats["documents_written"] > 0, source
    assert sum(stats["dropped"].values()) + sum(stats["malformed"].values()) > 0, source
  ccnet = json.loads((workdir / "documents" / "ccnet" / "stats.json").read_text())
  assert any(reason.startswith("language_") for reason in ccnet["dropped"])


def test_report_mixture_tokens_and_observed_shares(demo):
  workdir, _ = demo
  report = (workdir / "report.md").read_text()
  mixture = report[report.index("## 2."):report.index("## 3.")]
  observed = 0.0
  for source in SOURCES:
    index = json.loads((workdir / "tokens" / source / "index.json").read_text())
    row = _row(mixture, source)
    assert row[2] == f"{index['tokens']:,}"
    observed += float(row[5])
  assert observed == pytest.approx(100, abs=0.5)
  assert f"the {STEPS * BATCH:,} sequences" in mixture
  metrics = [json.loads(line) for line in (workdir / "train" / "metrics.jsonl").open()]
  assert sum(metrics[-1][f"sequences/{s}"] for s in SOURCES) == STEPS * BATCH


def test_report_training_evaluation_samples_energy_and_times(demo):
  workdir, _ = demo
  report = (workdir / "report.md").read_text()
  for heading in ("## 1. Corpus", "## 2. Tokens per source", "## 3. Training", "## 4. Evaluation",
                  "## 5. Samples", "## 6. Energy and carbon", "## 7. Wall time per stage"):
    assert heading in report
  assert (workdir / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert f"{STEPS} steps of {BATCH} x 256 tokens" in report
  results = json.loads((workdir / "eval" / "results.json").read_text())["results"]
  assert _row(report, "piqa")[1:7] == [
      "acc_norm", f"{100 * results['piqa']['acc_norm']:.1f}",
      f"{100 * results['piqa']['acc_norm_stderr']:.1f}", "2", "0", "79.8"]
  assert _row(report, "nq_open")[1] == "exact_match"
  samples = [json.loads(line) for line in (workdir / "samples.jsonl").open()]
  assert len(samples) == 4
  for sample in samples:
    assert f"**Prompt:** `{sample['prompt']!r}`" in report
  last = [json.loads(line) for line in (workdir / "train" / "metrics.jsonl").open()][-1]
  assert _row(report, f"{last['gpu_hours']:.4g}") == [
      f"{last['gpu_hours']:.4g}", f"{last['energy_mwh']:.4g}", f"{last['tco2eq']:.4g}"]
  times = json.loads((workdir / "stages.json").read_text())
  assert float(_row(report, "train")[1]) == times["train"]["seconds"]
  html = (workdir / "report.html").read_text()
  assert '<img src="loss.png"' in html and html.count("<table>") == 5


def test_second_run_skips_every_complete_stage(demo):
  workdir, first = demo
  report_before = (workdir / "report.md").read_text()
  second = _recipe(workdir)
  assert second.returncode == 0, second.stderr[-3000:]
  skipped = re.findall(r"^== \[\d+/\d+\] (\S+): complete from an earlier run, skipped$",
                       second.stdout, re.MULTILINE)
  assert len(skipped) == 2 * len(SOURCES) + 5 and "report" not in skipped
  report = (workdir / "report.md").read_text()
  # Same numbers; the time table keeps the first run's seconds and says the stages were skipped.
  assert report.split("## 7.")[0].split("\n", 3)[3] == report_before.split("## 7.")[0].split(
      "\n", 3)[3]
  assert _row(report, "train")[1:] == [_row(report_before, "train")[1], "skipped"]


def test_every_corpus_file_has_its_source_and_licence_listed():
  readme = (CORPUS / "README.md").read_text()
  files = [p for p in CORPUS.rglob("*") if p.is_file() and p.name != "README.md"]
  assert files
  for path in files:
    assert str(path.relative_to(CORPUS)) in readme, f"{path} is not listed in {CORPUS}/README.md"


def test_samples_with_code_fences_stay_one_block(tmp_path):
  from markdown_it import MarkdownIt
  from ml_collections import config_dict

  from llama_jax import report

  completion = " ```rust\nfn main() {}\n``` and ````"
  (tmp_path / "samples.jsonl").write_text(
      json.dumps({"prompt": "Code:", "completions": [completion]}) + "\n")
  settings = config_dict.ConfigDict(
      {"temperature": 0.8, "top_p": 0.95, "max_new_tokens": 8, "seed": 0})
  html = MarkdownIt("commonmark").render(report.samples_section(tmp_path / "samples.jsonl",
                                                                settings))
  assert html.count("<pre>") == 1
  assert "Code: ```rust\nfn main() {}\n``` and ````" in html
