"""Token shards of given documents, written as preprocessing.tokenize_shards writes them (for
tests and benchmarks of the loader)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llama_jax import data
from preprocessing.tokenize_shards import shard_of, write_index, write_shard


def write_source(directory: str | Path, documents: Sequence[np.ndarray], *, num_shards: int = 4,
                 vocab_size: int = 32000, eos_id: int = 2) -> list[Path]:
  """Writes token shards and index.json as tokenize_shards does; returns the shards' paths."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  dtype = data.token_dtype(vocab_size)
  by_shard: dict[int, list] = {}
  for i, tokens in enumerate(documents):
    doc_id = f"{i:09d}"
    by_shard.setdefault(shard_of(doc_id, num_shards), []).append(
        (doc_id, np.asarray(tokens, dtype).tobytes()))
  shards = [write_shard(item, str(directory), num_shards, dtype.itemsize)
            for item in sorted(by_shard.items())]
  write_index(shards, str(directory), {"input": "synthetic", "tokenizer": "synthetic",
                                       "tokenizer_sha256": "synthetic", "vocab_size": vocab_size,
                                       "eos_id": eos_id, "dtype": dtype.name})
  return [directory / shard["file"] for shard in shards]


def random_documents(rng: np.random.Generator, count: int, max_length: int,
                     vocab_size: int = 32000, eos_id: int = 2) -> list[np.ndarray]:
  lengths = rng.integers(1, max_length + 1, count)
  docs = [rng.integers(3, vocab_size, n) for n in lengths]
  for doc in docs:
    doc[-1] = eos_id
  return docs
