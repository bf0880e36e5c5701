"""`make demo`: the training recipe end to end on a corpus made on the spot, in minutes on a CPU.

python -m llama_jax.demo [--config=configs/tiny.py] [--workdir=runs/demo] [--steps=300]
                         [--config.KEY=VALUE ...]

1. corpus     the docstrings of the Python standard library installed here (read with `ast`,
              nothing imported): real English prose, no download; one JSON line per module.
2. tokenizer  SentencePiece BPE trained on it with the paper's settings, small vocabulary.
3. shards     `preprocessing.tokenize_shards` on Apache Beam: token ids with EOS, ArrayRecord.
4. training   `llama_jax.train.Trainer` on the config's model (tiny: 4 layers of dim 128) with the
              grain loader, checkpoints and metrics.jsonl; the loss is printed as it falls.
5. plot       loss against tokens, as PNG.
Each stage skips itself when its output is complete, so running it again resumes.
"""

from __future__ import annotations

import ast
import json
import sysconfig
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from llama_jax import metrics, tokenizer
from llama_jax.config import parse_flags
from llama_jax.model import ModelConfig
from llama_jax.train import Trainer, energy_summary

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "model and training config")
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "where every stage writes")
_STEPS = flags.DEFINE_integer("steps", 300, "training steps")
_VOCAB = flags.DEFINE_integer("vocab_size", 2000, "tokenizer vocabulary (small corpus)")

CORPUS_BYTES = 4_000_000  # enough text for a 2000-piece vocabulary and a few hundred steps
SOURCE = "python_docs"


def build_corpus(path: Path, max_bytes: int = CORPUS_BYTES) -> int:
  """One JSON line {id, text} per standard-library module: its docstrings, in file order."""
  stdlib = Path(sysconfig.get_paths()["stdlib"])
  written = 0
  with open(path, "w", encoding="utf-8") as out:
    for file in sorted(stdlib.rglob("*.py")):
      if "site-packages" in file.parts or "test" in file.parts or written >= max_bytes:
        continue
      try:
        tree = ast.parse(file.read_bytes())
      except (SyntaxError, ValueError):  # a few files are deliberately broken (lib2to3 data)
        continue
      docs = [ast.get_docstring(node) for node in ast.walk(tree)
              if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef,
                                   ast.AsyncFunctionDef))]
      text = "\n\n".join(doc for doc in docs if doc)
      if text:
        line = json.dumps({"id": str(file.relative_to(stdlib)), "text": text}) + "\n"
        out.write(line)
        written += len(line.encode("utf-8"))
  return written


def _stage(name: str, done: bool) -> bool:
  print(f"== {name}: {'done before, skipped' if done else 'running'}", flush=True)
  return not done


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  config = _CONFIG.value
  with config.unlocked():
    config.model.vocab_size = _VOCAB.value
    config.train.total_tokens = float(
        _STEPS.value * config.train.batch_size * config.model.context_length)
    # A short demo run still warms up over at most a tenth of its steps.
    config.optim.warmup_steps = min(config.optim.warmup_steps, max(1, _STEPS.value // 10))
  try:
    ModelConfig.from_dict(config.model)
  except ValueError as error:  # before minutes of corpus work, not after
    raise app.UsageError(str(error)) from None
  workdir = Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  corpus, spm_prefix = workdir / "corpus.jsonl", workdir / "tokenizer"
  shards = workdir / "tokens" / SOURCE

  if _stage("corpus (Python standard library docstrings)", corpus.exists()):
    partial = corpus.with_suffix(".partial")
    print(f"   {build_corpus(partial):,} bytes")
    partial.rename(corpus)
  if _stage(f"tokenizer (SentencePiece BPE, {_VOCAB.value} pieces)",
            Path(f"{spm_prefix}.model").exists()):
    tokenizer.train([str(corpus)], spm_prefix, vocab_size=_VOCAB.value, minloglevel=1)
  if _stage("token shards (Apache Beam)", (shards / "index.json").exists()):
    from preprocessing import tokenize_shards  # Beam loads only when the stage runs
    tokenize_shards.main([f"--input={corpus}", f"--output={shards}",
                          f"--tokenizer={spm_prefix}.model", "--num_shards=4"])

  with config.unlocked():
    config.data.dir = str(shards.parent)
    config.data.shares = config_dict.ConfigDict({SOURCE: 1.0})
  train_dir = workdir / "train"
  print(f"== training: {_STEPS.value} steps of {config.train.batch_size} x "
        f"{config.model.context_length} tokens, checkpoints and metrics in {train_dir}", flush=True)
  trainer = Trainer(config, train_dir)
  try:
    result = trainer.run()
  finally:
    trainer.close()
  records = metrics.read_metrics(train_dir / "metrics.jsonl")
  shown = {1, *range(0, len(records) + 1, max(1, len(records) // 6)), len(records)}
  for record in records:
    if record["step"] in shown:
      print(f"   step {record['step']:4d}  tokens {record['tokens']:>9,}  "
            f"loss {record['loss']:.3f}")
  print(f"   {energy_summary(result)}")
  metrics.plot_loss(train_dir / "metrics.jsonl", workdir / "loss.png")
  print(f"== plot of loss against tokens: {workdir / 'loss.png'}", flush=True)
  logging.info("demo finished in %s", workdir)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
