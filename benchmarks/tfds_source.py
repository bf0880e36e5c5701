"""A TFDS training source beside token shards of the same documents: python -m
benchmarks.tfds_source [--sources=github,books,wikipedia] [--batch_size=8] [--context_length=2048]
[--read_threads=2] [--epochs=3] [--repeats=3]

Runs the given sources' pipelines over examples/mini_corpus twice (JSONL and
`--output_format=tfds`, the same documents in the same shards), tokenizes the JSONL with Meta's
tokenizer into token shards, then times, alternately --repeats times each, llama_jax.data's loader
over the token shards and over the TFDS datasets (text tokenized on the fly): after one batch
(threads started, readers open), the time to deliver --epochs times the tokens the shards hold.
One JSON object per side: tokens/s of the best run and of every run. The gap is the price of
tokenizing in the loader.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from llama_jax import data
from llama_jax.config import load_config_file
from preprocessing import run, tokenize_shards

REPO_ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = REPO_ROOT / "tests" / "data" / "llama-tokenizer" / "tokenizer.model"
NUM_SHARDS = 4


def prepare(root: Path, sources: Sequence[str]) -> None:
  """JSONL, TFDS and token shards of each source's documents under root."""
  recipe = load_config_file(REPO_ROOT / "configs" / "mini.py").recipe
  corpus = REPO_ROOT / recipe.corpus_dir
  for name in sources:
    argv = [f"--source={name}", f"--input={corpus / recipe.sources[name].input}",
            f"--num_shards={NUM_SHARDS}", *recipe.sources[name].flags]
    run.main([*argv, f"--output={root / 'jsonl' / name}"])
    run.main([*argv, f"--output={root / 'tfds'}", "--output_format=tfds"])
    tokenize_shards.main([f"--input={root / 'jsonl' / name / 'documents-*'}",
                          f"--output={root / 'tokens' / name}", f"--tokenizer={TOKENIZER}",
                          f"--num_shards={NUM_SHARDS}"])


def timed_pass(root: Path, sources: Sequence[str], from_tfds: bool, tokens: int,
               args) -> tuple[int, float]:
  """Tokens and seconds of batches from make_iterator, after its first, until it delivered
  `tokens`."""
  tfds = ({name: {"name": f"llama_corpus/{name}", "version": None, "split": "train",
                  "feature": "text", "data_dir": str(root / "tfds")} for name in sources}
          if from_tfds else None)
  iterator = data.make_iterator(root / "tokens", {name: 1.0 for name in sources},
                                batch_size=args.batch_size, context_length=args.context_length,
                                vocab_size=32000, read_threads=args.read_threads, tfds=tfds,
                                tokenizer=TOKENIZER)
  steps = tokens // (args.batch_size * args.context_length)
  next(iterator)
  start = time.perf_counter()
  delivered = sum(next(iterator)["inputs"].size for _ in range(steps))
  seconds = time.perf_counter() - start
  iterator.close()
  return delivered, seconds


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--sources", default="github,books,wikipedia")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--context_length", type=int, default=2048)
  parser.add_argument("--read_threads", type=int, default=2, help="per source")
  parser.add_argument("--epochs", type=int, default=3, help="passes over the sources, timed")
  parser.add_argument("--repeats", type=int, default=3, help="the best run is reported")
  args = parser.parse_args(argv)
  sources = args.sources.split(",")
  with tempfile.TemporaryDirectory() as tmp:
    root = Path(tmp)
    prepare(root, sources)
    tokens = args.epochs * sum(data.SourceShards.read(name, root / "tokens" / name).tokens
                               for name in sources)
    runs = {"token_shards": [], "tfds_text": []}
    for _ in range(args.repeats):  # alternated, so both see the same machine load
      for side in runs:
        runs[side].append(timed_pass(root, sources, side == "tfds_text", tokens, args))
  for side, timings in runs.items():
    rates = [delivered / seconds for delivered, seconds in timings]
    print(json.dumps({"benchmark": "tfds_source", "measurement": side, "sources": sources,
                      "tokens": timings[0][0], "tokens_per_s": round(max(rates)),
                      "runs_tokens_per_s": [round(rate) for rate in rates],
                      "batch_size": args.batch_size, "context_length": args.context_length,
                      "read_threads": args.read_threads,
                      "cpu": platform.processor() or platform.machine(),
                      "cores": len(os.sched_getaffinity(0))}), flush=True)


if __name__ == "__main__":
  main()
