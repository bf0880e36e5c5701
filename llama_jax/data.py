"""Training batches from tokenized shards with grain: the Table 1 mixture, packed sequences.

Each source is a directory written by `preprocessing.tokenize_shards` (ArrayRecord shards, one
document's token ids with EOS per record, and `index.json`). Per source, grain reads the
documents in a shuffled order, reshuffled every epoch and repeated without end
(MapDataset.shuffle, repeat, then read in blocks of DOCUMENTS_PER_BLOCK consecutive documents of
that order); ConcatThenSplitIterDataset concatenates them and cuts the stream
into pieces of context_length + 1 tokens, so a document's tail carries over into the next piece
and nothing is dropped, across epoch ends too: the last document of an epoch is followed by the
first of the next. IterDataset.mix interleaves the sources' pieces by their shares
(deterministically: every window of sum(shares) pieces holds each source's exact share); a
global batch of `batch_size` pieces becomes inputs = piece[:-1], targets = piece[1:].

Every process runs the same pipeline and keeps rows [p*B/P, (p+1)*B/P) of each global batch, so
the batches do not depend on the number of processes (a run resumed on another topology sees the
same data), at the price of each process packing the whole global batch; a background thread
keeps `prefetch_batches` ready. `DataIterator.get_state()` is a small JSON-able dict; a fresh
iterator given it with set_state() continues exactly where the first one was. Epochs are counted
per source as tokens drawn / tokens in the source, so the paper's ~2 epochs of Wikipedia and
Books show up as such.
"""

from __future__ import annotations

import bisect
import dataclasses
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import grain
import jax
import numpy as np
from grain.experimental import ConcatThenSplitIterDataset, ThreadPrefetchIterDataset

INDEX_FILE = "index.json"
# group_size:1 is what grain needs for fast random access; zstd is ArrayRecord's default.
SHARD_WRITER_OPTIONS = "group_size:1"


def token_dtype(vocab_size: int) -> np.dtype:
  return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


class DataError(ValueError):
  """Token shards that cannot be read as they should; the message names the file and the fix."""


def _retokenize_hint(name: str, directory: Path) -> str:
  return (f"re-run `python -m preprocessing.tokenize_shards --output={directory} ...` for "
          f"source {name!r}")


@dataclasses.dataclass(frozen=True)
class SourceShards:
  """One source's shards as its index.json lists them."""

  name: str
  directory: Path
  files: tuple[Path, ...]
  documents: tuple[int, ...]  # per shard
  tokens: int
  vocab_size: int  # of the tokenizer that made the shards
  dtype: np.dtype
  tokenizer_sha256: str

  @classmethod
  def read(cls, name: str, directory: str | Path) -> SourceShards:
    directory = Path(directory)
    index_path = directory / INDEX_FILE
    if not index_path.is_file():
      raise DataError(f"{index_path} does not exist: tokenize the {name!r} documents with "
                      f"`python -m preprocessing.tokenize_shards --output={directory} ...`, or "
                      f"set its share to 0")
    try:
      index = json.loads(index_path.read_text())
      shards = index["shards"]
      files = tuple(directory / shard["file"] for shard in shards)
      source = cls(name=name, directory=directory, files=files,
                   documents=tuple(int(shard["documents"]) for shard in shards),
                   tokens=int(index["tokens"]), vocab_size=int(index["vocab_size"]),
                   dtype=np.dtype(index["dtype"]),
                   tokenizer_sha256=index["tokenizer_sha256"])
    except (ValueError, KeyError, TypeError) as error:
      raise DataError(f"{index_path} is not a token-shard index ({type(error).__name__}: "
                      f"{error}); {_retokenize_hint(name, directory)}") from None
    for file in files:
      if not file.is_file():
        raise DataError(f"{file}: shard listed in {index_path} is missing; "
                        f"{_retokenize_hint(name, directory)}")
    if not files or source.tokens == 0:
      raise DataError(f"{index_path}: source {name!r} has no tokens; give it documents or set "
                      "its share to 0")
    return source


class TokenRecords(grain.sources.RandomAccessDataSource):
  """A source's documents as token arrays, each checked against the vocabulary."""

  def __init__(self, source: SourceShards, vocab_size: int):
    self.source, self.vocab_size = source, vocab_size
    # File instructions (path[start:end]) spare opening every shard up front.
    self._records = grain.sources.ArrayRecordDataSource(
        [f"{file}[0:{count}]" for file, count in zip(source.files, source.documents, strict=True)])
    self._ends = np.cumsum(source.documents).tolist()

  def __len__(self) -> int:
    return self._ends[-1]

  def _where(self, index: int) -> str:
    shard = bisect.bisect_right(self._ends, index)
    position = index - (self._ends[shard - 1] if shard else 0)
    return f"{self.source.files[shard]}: record {position}"

  def __getitem__(self, index: int) -> np.ndarray:
    try:
      record = self._records[index]
    except Exception as error:  # Riegeli reports damage as RuntimeError, a short file otherwise
      raise DataError(f"{self._where(index)} cannot be read ({error}); "
                      f"{_retokenize_hint(self.source.name, self.source.directory)}") from None
    if not record or len(record) % self.source.dtype.itemsize:
      raise DataError(f"{self._where(index)} is corrupt ({len(record)} bytes is no whole number "
                      f"of {self.source.dtype.name} tokens); "
                      f"{_retokenize_hint(self.source.name, self.source.directory)}")
    tokens = np.frombuffer(record, self.source.dtype)
    if (largest := int(tokens.max())) >= self.vocab_size:
      raise DataError(f"{self._where(index)} holds token id {largest}, outside the model's "
                      f"vocabulary of {self.vocab_size}: the shards were made with another "
                      f"tokenizer; {_retokenize_hint(self.source.name, self.source.directory)}")
    return tokens


# Documents are read in blocks of this many (still in the per-document shuffled order) and the
# packer concatenates blocks: grain's fixed cost per element, paid once per block instead of per
# document, made the whole loader 1.4x faster (docs/results/data_loader.md).
DOCUMENTS_PER_BLOCK = 32


def _concatenate(documents: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
  return {"tokens": np.concatenate(documents)}


def _source_seed(seed: int, name: str) -> int:
  """A seed per source, so equal-sized sources are not shuffled alike."""
  return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "little")


def packed_sequences(source: SourceShards, *, vocab_size: int, sequence_length: int, seed: int,
                     read_threads: int) -> grain.IterDataset:
  """A source's documents, shuffled per epoch and repeated, packed into sequence_length pieces."""
  documents = (grain.MapDataset.source(TokenRecords(source, vocab_size))
               .shuffle(seed=_source_seed(seed, source.name))
               .repeat())
  blocks = documents.batch(DOCUMENTS_PER_BLOCK, batch_fn=_concatenate)
  read_options = grain.ReadOptions(num_threads=read_threads,
                                   prefetch_buffer_size=4 * read_threads)
  return ConcatThenSplitIterDataset(blocks.to_iter_dataset(read_options),
                                    length_struct={"tokens": sequence_length})


class _GlobalBatchRows:
  """grain batch_fn: this process's rows of a global batch, and the global count per source."""

  def __init__(self, rows: slice, num_sources: int):
    self.rows, self.num_sources = rows, num_sources

  def __call__(self, pieces: Sequence[tuple[int, dict]]):
    sources = np.fromiter((source for source, _ in pieces), np.int32, len(pieces))
    tokens = np.stack([piece["tokens"] for _, piece in pieces[self.rows]]).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "source": sources[self.rows]}
    return batch, np.bincount(sources, minlength=self.num_sources)


def _tag_source(index: int):
  return lambda piece: (index, piece)


class DataIterator:
  """This process's batches: {"inputs", "targets": int32 [rows, L], "source": int32 [rows]}.

  `source` indexes `sources`. get_state()/set_state() checkpoint the position exactly.
  """

  def __init__(self, dataset: grain.IterDataset, sources: Sequence[SourceShards],
               sequence_length: int):
    self.sources = list(sources)
    self.sequence_length = sequence_length
    self._iterator = iter(dataset)
    self._pieces = np.zeros(len(self.sources), np.int64)

  def __iter__(self) -> DataIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch, pieces = next(self._iterator)
    self._pieces += pieces
    return batch

  def get_state(self) -> dict:
    return {"grain": self._iterator.get_state(),
            "pieces": {s.name: int(n) for s, n in zip(self.sources, self._pieces, strict=True)}}

  def set_state(self, state: Mapping) -> None:
    self._iterator.set_state(_slices_as_tuples(state["grain"]))
    self._pieces = np.array([state["pieces"].get(s.name, 0) for s in self.sources], np.int64)

  def epochs(self) -> dict[str, float]:
    """Passes over each source so far: its tokens drawn into batches / its tokens."""
    return {s.name: float(n) * self.sequence_length / s.tokens
            for s, n in zip(self.sources, self._pieces, strict=True)}

  def close(self) -> None:
    self._iterator.close()


def _slices_as_tuples(state):
  """Undoes JSON's tuple -> list in grain's packer state: ConcatThenSplit tells "no remainder"
  by comparing its slices with the tuple (-1, -1), so a list there would lose a block."""
  if isinstance(state, dict):
    return {key: ({k: tuple(v) for k, v in value.items()} if key == "remainder_slices"
                  else _slices_as_tuples(value)) for key, value in state.items()}
  return state


def planned_epochs(sources: Sequence[SourceShards], shares: Mapping[str, float],
                   total_tokens: float) -> dict[str, float]:
  """Epochs of each source after `total_tokens` of training (paper Table 1's last column)."""
  total_share = sum(shares[s.name] for s in sources)
  return {s.name: total_tokens * shares[s.name] / total_share / s.tokens for s in sources}


def make_iterator(data_dir: str | Path, shares: Mapping[str, float], *, batch_size: int,
                  context_length: int, vocab_size: int, seed: int = 0,
                  process_index: int = 0, process_count: int = 1, read_threads: int = 2,
                  prefetch_batches: int = 2, total_tokens: float | None = None) -> DataIterator:
  """The batches of process `process_index` of `process_count`; sources are data_dir/<name>.

  A source with share 0 is not read (its directory need not exist); every other must have
  tokens, made with one tokenizer whose ids fit the model's vocabulary.
  """
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} does not divide over {process_count} processes")
  if any(share < 0 for share in shares.values()) or not any(shares.values()):
    raise ValueError(f"data shares {dict(shares)} must be >= 0 with at least one positive")
  sources = [SourceShards.read(name, Path(data_dir) / name)
             for name, share in shares.items() if share > 0]
  tokenizers = {s.tokenizer_sha256 for s in sources}
  if len(tokenizers) > 1:
    raise DataError("sources were tokenized with different tokenizers: "
                    + ", ".join(f"{s.name} ({s.tokenizer_sha256[:12]})" for s in sources))
  for s in sources:
    if s.vocab_size > vocab_size:
      raise DataError(f"{s.directory / INDEX_FILE}: made with a tokenizer of {s.vocab_size} "
                      f"pieces, more than the model's vocabulary of {vocab_size}; "
                      f"{_retokenize_hint(s.name, s.directory)} with the model's tokenizer")
  if total_tokens:
    logging.info("planned epochs per source over %.3g tokens: %s", total_tokens,
                 {k: round(v, 2) for k, v in planned_epochs(sources, shares, total_tokens).items()})

  pieces = {s.name: packed_sequences(s, vocab_size=vocab_size,
                                     sequence_length=context_length + 1, seed=seed,
                                     read_threads=read_threads).map(_tag_source(i))
            for i, s in enumerate(sources)}
  mixed = grain.IterDataset.mix(pieces, {s.name: shares[s.name] for s in sources})
  rows = batch_size // process_count
  batches = mixed.batch(batch_size, batch_fn=_GlobalBatchRows(
      slice(process_index * rows, (process_index + 1) * rows), len(sources)))
  return DataIterator(ThreadPrefetchIterDataset(batches, prefetch_buffer_size=prefetch_batches),
                      sources, context_length + 1)


def iterator_from_config(config, process_index: int | None = None,
                         process_count: int | None = None) -> DataIterator:
  """make_iterator with the settings of a full config (`data`, `model`, `train` sections)."""
  if process_index is None or process_count is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  data = config.data
  if data.dir is None:
    raise ValueError("config.data.dir is not set: give --config.data.dir=DIR holding one "
                     "directory of token shards per source (preprocessing.tokenize_shards)")
  return make_iterator(data.dir, dict(data.shares), batch_size=config.train.batch_size,
                       context_length=config.model.context_length,
                       vocab_size=config.model.vocab_size, seed=data.seed,
                       process_index=process_index, process_count=process_count,
                       read_threads=data.read_threads, prefetch_batches=data.prefetch_batches,
                       total_tokens=config.train.total_tokens)
