"""`make demo`: the paper's recipe in miniature, from raw documents to an evaluated model.

python -m llama_jax.recipe --config=configs/mini.py --workdir=runs/demo [--config.KEY=VALUE ...]

Stages, each skipped when its outputs are complete (so a second run resumes, and a run stopped
midway goes on from the stage it was in; remove a stage's outputs to redo it):
  language_id   CCNet's fastText language identifier, trained on the corpus's labelled pages
                (lid.176.bin is 126 MB; the config can name it instead)
  preprocess    each Table 1 source's Beam pipeline (DirectRunner) over the shipped raw files
  tokenizer     SentencePiece BPE with the paper's settings, on the kept documents
  shards        ArrayRecord token shards per source (Beam)
  train         the config's model on the Table 1 mixture (grain), checkpoints and metrics
  eval          multiple-choice and generative benchmarks on the samples the repository ships
  samples       completions of the config's prompts
  report        WORKDIR/report.md and report.html (llama_jax.report), with loss.png
"""

from __future__ import annotations

import functools
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from llama_jax import metrics, report, tokenizer
from llama_jax.config import parse_flags, total_steps
from llama_jax.data import INDEX_FILE, sources_by_share
from llama_jax.model import ModelConfig
from llama_jax.train import Trainer, energy_summary

_CONFIG = config_flags.DEFINE_config_file("config", "configs/mini.py", "recipe config")
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "where every stage writes")

STAGES_FILE = "stages.json"


class Stages:
  """Runs stages in order, each skipped when `done()` says its outputs are complete; keeps the
  wall time of each stage's last run in WORKDIR/stages.json for the report."""

  def __init__(self, workdir: Path, count: int):
    self.path = workdir / STAGES_FILE
    self.times = json.loads(self.path.read_text()) if self.path.exists() else {}
    self.count, self.index = count, 0

  def run(self, name: str, what: str, done: Callable[[], bool], work: Callable[[], None]) -> None:
    self.index += 1
    prefix = f"== [{self.index}/{self.count}] {name}"
    if done():
      print(f"{prefix}: complete from an earlier run, skipped", flush=True)
      self.times.setdefault(name, {})["this_run"] = "skipped"
    else:
      print(f"{prefix}: {what}", flush=True)
      start = time.perf_counter()
      work()
      seconds = time.perf_counter() - start
      print(f"{prefix}: done in {seconds:.1f} s", flush=True)
      self.times[name] = {"seconds": round(seconds, 1), "this_run": "ran"}
    self.path.write_text(json.dumps(self.times, indent=2) + "\n")


def _python(*args: str) -> None:
  """Runs `python -m ...` (an absl program of ours) in a child process; its failure is ours."""
  result = subprocess.run([sys.executable, "-m", *args])
  if result.returncode:
    raise SystemExit(f"error: `python -m {' '.join(args)}` exited with {result.returncode}")


def _shards_done(directory: Path, tokenizer_sha256: Callable[[], str]) -> bool:
  """Shards exist and were made with the current tokenizer (a retrained one redoes them)."""
  index = directory / INDEX_FILE
  return (index.exists()
          and json.loads(index.read_text())["tokenizer_sha256"] == tokenizer_sha256())


def _train_done(train_dir: Path, steps: int) -> bool:
  """The run logged its last step and saved its checkpoint."""
  log = train_dir / "metrics.jsonl"
  records = metrics.read_metrics(log) if log.exists() else []
  last_checkpoint = train_dir / "checkpoints" / str(steps)
  return bool(records) and records[-1]["step"] == steps and last_checkpoint.is_dir()


def run_recipe(config, workdir: Path) -> Path:
  """Every stage of the recipe into `workdir`; returns the path of report.md."""
  recipe = config.recipe
  corpus = Path(recipe.corpus_dir)
  sources = sources_by_share(config.data.shares)
  unknown = sorted(set(sources) - set(recipe.sources))
  if unknown:
    raise ValueError(f"data.shares names sources {unknown} that recipe.sources does not list; "
                     f"give their raw files in recipe.sources or set their shares to 0")
  workdir.mkdir(parents=True, exist_ok=True)
  lid_model = (Path(recipe.language_id_model) if recipe.language_id_model
               else workdir / "models" / "lid.bin")
  spm_model = workdir / "tokenizer.model"
  train_dir = workdir / "train"
  steps = total_steps(config)
  train_lid = "ccnet" in sources and not recipe.language_id_model
  stages = Stages(workdir, count=2 * len(sources) + 5 + train_lid)

  def train_language_id():
    from preprocessing.ccnet.language_id import train_language_id

    partial = lid_model.with_suffix(".partial")
    partial.parent.mkdir(parents=True, exist_ok=True)
    train_language_id(corpus / recipe.language_id_data, partial)
    partial.rename(lid_model)

  if train_lid:
    stages.run("language_id", f"fastText language id on {corpus / recipe.language_id_data}",
               lid_model.exists, train_language_id)

  for name in sources:
    source = recipe.sources[name]
    output = workdir / "documents" / name
    argv = [f"--source={name}", f"--input={corpus / source.input}", f"--output={output}",
            "--num_shards=1", *source.flags]
    if name == "ccnet":
      argv.append(f"--lid_model={lid_model}")

    def preprocess(argv=argv):
      from preprocessing import run  # Beam loads only when a pipeline runs

      run.main(argv)

    stages.run(f"preprocess/{name}", f"{name} pipeline on {corpus / source.input}",
               (output / "stats.json").exists, preprocess)

  def train_tokenizer():
    partial = workdir / "partial-tokenizer"  # renamed when whole: a killed run leaves no model
    tokenizer.train([str(workdir / "documents" / name / "documents-*") for name in sources],
                    partial, vocab_size=config.model.vocab_size, minloglevel=1)
    Path(f"{partial}.vocab").rename(spm_model.with_suffix(".vocab"))
    Path(f"{partial}.model").rename(spm_model)

  stages.run("tokenizer", f"SentencePiece BPE, {config.model.vocab_size} pieces",
             spm_model.exists, train_tokenizer)

  # Read once, after the tokenizer stage: every source's shards are checked against it.
  tokenizer_sha256 = functools.cache(lambda: tokenizer.Tokenizer(spm_model).sha256)
  for name in sources:
    output = workdir / "tokens" / name

    def make_shards(name=name, output=output):
      from preprocessing import tokenize_shards

      tokenize_shards.main([f"--input={workdir / 'documents' / name / 'documents-*'}",
                            f"--output={output}", f"--tokenizer={spm_model}", "--num_shards=2"])

    stages.run(f"shards/{name}", f"token shards of {name}",
               lambda output=output: _shards_done(output, tokenizer_sha256), make_shards)

  def train():
    train_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spm_model, train_dir / "tokenizer.model")  # the run carries its tokenizer
    trainer = Trainer(config, train_dir)
    try:
      result = trainer.run()
    finally:
      trainer.close()
    print(f"   {energy_summary(result)}")
    metrics.plot_loss(train_dir / "metrics.jsonl", workdir / "loss.png")
    if result["step"] < steps:  # SIGTERM or SIGINT: saved; later stages need the whole run
      raise SystemExit(f"training stopped at step {result['step']} of {steps} (checkpoint "
                       f"saved); run the same command again to resume")

  with config.unlocked():
    config.data.dir = str(workdir / "tokens")
    config.data.tokenizer = "tokenizer.model"  # in the run directory
  stages.run("train", f"{steps} steps of {config.train.batch_size} x "
             f"{config.model.context_length} tokens into {train_dir}",
             lambda: _train_done(train_dir, steps), train)

  results = workdir / "eval" / "results.json"
  eval_args = [f"--tasks={recipe.eval.tasks}", f"--data_dir={recipe.eval.data_dir}",
               f"--output={results}", f"--max_new_tokens={recipe.eval.max_new_tokens}"]
  if recipe.eval.limit:
    eval_args.append(f"--limit={recipe.eval.limit}")
  stages.run("eval", f"{recipe.eval.tasks} on {recipe.eval.data_dir}", results.exists,
             lambda: _python("llama_jax.eval", f"--ckpt={train_dir}", *eval_args))

  samples = workdir / "samples.jsonl"
  sampling = recipe.samples
  stages.run("samples", f"{len(sampling.prompts)} prompts, {sampling.num_samples} samples each",
             samples.exists,
             lambda: _python("llama_jax.generate", f"--ckpt={train_dir}",
                             *(f"--prompt={p}" for p in sampling.prompts),
                             f"--max_new_tokens={sampling.max_new_tokens}",
                             f"--temperature={sampling.temperature}", f"--top_p={sampling.top_p}",
                             f"--num_samples={sampling.num_samples}", f"--seed={sampling.seed}",
                             f"--output={samples}"))

  stages.run("report", "report.md and report.html", lambda: False,
             lambda: report.write_report(config, workdir, stages.times))
  return workdir / "report.md"


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  config = _CONFIG.value
  try:
    ModelConfig.from_dict(config.model)  # before minutes of corpus work, not after
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  start = time.perf_counter()
  try:
    path = run_recipe(config, Path(_WORKDIR.value))
  except (ValueError, FileNotFoundError) as error:  # the config, or a file it names
    raise app.UsageError(str(error)) from None
  print(f"recipe finished in {time.perf_counter() - start:.0f} s; report: {path} "
        f"(and {path.with_suffix('.html')})", flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
