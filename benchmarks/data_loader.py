"""Data-loader throughput on CPU: python -m benchmarks.data_loader [--documents=20000]
    [--max_length=2048] [--batch_size=16] [--context_length=2048] [--read_threads=0] [--repeats=3]

Writes --documents random-length documents (uniform in [1, --max_length] tokens, random ids
below 32000) as token shards of the seven Table 1 sources, each source's tokens in proportion
to its share, in a temporary directory. Then times, alternately --repeats times each, and prints
one JSON object per measurement with the best run and all runs:
  - bare_read: grain's plain ArrayRecord read of all shards in a shuffled order
    (MapDataset.source(ArrayRecordDataSource).shuffle().to_iter_dataset()), tokens/s;
  - full_loader: llama_jax.data.make_iterator (read, check, mix, shuffle, pack, batch,
    prefetch) until it has delivered as many tokens as the shards hold, tokens/s.
Both read with the same --read_threads.
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

import grain
import numpy as np

from llama_jax import data
from preprocessing.testing.token_shards import random_documents, write_source

TABLE_1_SHARES = {"ccnet": 67.0, "c4": 15.0, "github": 4.5, "wikipedia": 4.5, "books": 4.5,
                  "arxiv": 2.5, "stackexchange": 2.0}


def _emit(record: dict) -> None:
  machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
             "grain": grain.__version__}
  print(json.dumps({"benchmark": "data_loader", **record, **machine}), flush=True)


def bare_read(sources: Sequence[data.SourceShards], read_threads: int) -> tuple[int, float]:
  """Tokens and seconds of one shuffled pass over every shard with grain alone."""
  files = [str(f) for s in sources for f in s.files]
  dataset = (grain.MapDataset.source(grain.sources.ArrayRecordDataSource(files))
             .shuffle(seed=0)
             .to_iter_dataset(grain.ReadOptions(num_threads=read_threads,
                                                prefetch_buffer_size=4 * read_threads)))
  start = time.perf_counter()
  tokens = sum(len(record) for record in dataset) // 2  # uint16 tokens
  return tokens, time.perf_counter() - start


def full_loader(root: Path, sources: Sequence[data.SourceShards], *, batch_size: int,
                context_length: int, read_threads: int) -> tuple[int, float]:
  """Tokens and seconds of batches from make_iterator until it delivered the shards' tokens."""
  iterator = data.make_iterator(root, TABLE_1_SHARES, batch_size=batch_size,
                                context_length=context_length, vocab_size=32000,
                                read_threads=read_threads)
  steps = sum(s.tokens for s in sources) // (batch_size * context_length)
  start = time.perf_counter()
  tokens = sum(next(iterator)["inputs"].size for _ in range(steps))
  seconds = time.perf_counter() - start
  iterator.close()
  return tokens, seconds


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--documents", type=int, default=20000)
  parser.add_argument("--max_length", type=int, default=2048)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--context_length", type=int, default=2048)
  parser.add_argument("--read_threads", type=int, default=0,
                      help="grain read threads (per source in the loader); 0 reads inline")
  parser.add_argument("--repeats", type=int, default=3, help="the best run is reported")
  args = parser.parse_args(argv)

  rng = np.random.default_rng(0)
  total = sum(TABLE_1_SHARES.values())
  with tempfile.TemporaryDirectory() as tmp:
    for name, share in TABLE_1_SHARES.items():
      write_source(Path(tmp) / name,
                   random_documents(rng, round(args.documents * share / total), args.max_length))
    sources = [data.SourceShards.read(name, Path(tmp) / name) for name in TABLE_1_SHARES]
    os.sync()  # no write-back of the fresh shards during the timings
    runs = {"bare_read": [], "full_loader": []}
    bare_read(sources, args.read_threads)  # warm-up: page cache, readers
    for _ in range(args.repeats):  # alternated, so both see the same machine load
      runs["bare_read"].append(bare_read(sources, args.read_threads))
      runs["full_loader"].append(full_loader(
          Path(tmp), sources, batch_size=args.batch_size, context_length=args.context_length,
          read_threads=args.read_threads))
    setup = {"documents": sum(sum(s.documents) for s in sources), "max_length": args.max_length,
             "read_threads": args.read_threads}
    for name, timings in runs.items():
      rates = [tokens / seconds for tokens, seconds in timings]
      _emit({"measurement": name, "tokens": timings[0][0],
             "tokens_per_s": round(max(rates)), "runs_tokens_per_s": [round(r) for r in rates],
             **setup, **({"batch_size": args.batch_size, "context_length": args.context_length}
                         if name == "full_loader" else {})})


if __name__ == "__main__":
  main()
