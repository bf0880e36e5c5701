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

A bad record (one that fails its checksum, has a byte length that is no whole number of tokens,
is empty, or holds a token id outside the vocabulary) is named by shard file and record index.
With on_bad_record="stop" (the default) the loader raises DataError; with "skip" the document is
dropped (the packer goes on with the next one, so the stream stays deterministic and a restore
stays exact), a warning names it, and `DataIterator.bad_records()` counts it; the count is part
of the iterator's state. A shard that cannot be opened at all (truncated, not ArrayRecord, fewer
records than index.json lists) is an error in both modes: skipping it would drop it silently.
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
from array_record.python import array_record_module
from grain.experimental import ConcatThenSplitIterDataset, ThreadPrefetchIterDataset

INDEX_FILE = "index.json"
# group_size:1 is what grain needs for fast random access; zstd is ArrayRecord's default.
SHARD_WRITER_OPTIONS = "group_size:1"
# config.data.on_bad_record: raise at a bad record, or drop its document and count it.
ON_BAD_RECORD = ("stop", "skip")


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
  """A source's documents as token arrays, each checked against the vocabulary.

  A bad record raises DataError naming its shard and index (on_bad_record="stop") or reads as
  an empty array ("skip"; real documents are never empty, they hold at least EOS).
  """

  def __init__(self, source: SourceShards, vocab_size: int, on_bad_record: str = "stop"):
    if on_bad_record not in ON_BAD_RECORD:
      raise ValueError(f"on_bad_record={on_bad_record!r}: give one of {ON_BAD_RECORD}")
    self.source, self.vocab_size, self.on_bad_record = source, vocab_size, on_bad_record
    # File instructions (path[start:end]) spare opening every shard up front.
    self._records = grain.sources.ArrayRecordDataSource(
        [f"{file}[0:{count}]" for file, count in zip(source.files, source.documents, strict=True)])
    self._ends = np.cumsum(source.documents).tolist()
    self._whole_shards: set[int] = set()  # shards seen to open with all their records

  def __len__(self) -> int:
    return self._ends[-1]

  def _locate(self, index: int) -> tuple[int, int]:
    """(shard, record index within the shard) of a record of the source."""
    shard = bisect.bisect_right(self._ends, index)
    return shard, index - (self._ends[shard - 1] if shard else 0)

  def __getitem__(self, index: int) -> np.ndarray:
    try:
      record = self._records[index]
    except Exception as error:  # Riegeli reports damage as RuntimeError, a short file otherwise
      self._check_shard_opens(self._locate(index)[0], error)
      return self._bad(index, f"cannot be read ({error})")
    itemsize = self.source.dtype.itemsize
    if not record:
      return self._bad(index, "is empty (a document holds at least its EOS token)")
    if len(record) % itemsize:
      return self._bad(index, f"is corrupt ({len(record)} bytes is no whole number of "
                              f"{itemsize}-byte {self.source.dtype.name} tokens)")
    tokens = np.frombuffer(record, self.source.dtype)
    if (largest := int(tokens.max())) >= self.vocab_size:
      return self._bad(index, f"holds token id {largest}, outside the model's vocabulary of "
                              f"{self.vocab_size}: the shards were made with another tokenizer")
    return tokens

  def _bad(self, index: int, problem: str) -> np.ndarray:
    shard, position = self._locate(index)
    where = f"{self.source.files[shard]}: record {position}"
    if self.on_bad_record == "stop":
      hint = _retokenize_hint(self.source.name, self.source.directory)
      raise DataError(f"{where} {problem}; {hint}, or set --config.data.on_bad_record=skip to "
                      "drop bad records and count them") from None
    logging.warning("%s of source %r %s; skipped (config.data.on_bad_record=skip) and counted in "
                    "the data iterator's bad_records", where, self.source.name, problem)
    return np.empty(0, self.source.dtype)

  def _check_shard_opens(self, shard: int, error: Exception) -> None:
    """Raises DataError, in both on_bad_record modes, if a shard cannot be opened whole."""
    if shard in self._whole_shards:
      return
    file, expected = self.source.files[shard], self.source.documents[shard]
    try:
      reader = array_record_module.ArrayRecordReader(str(file))
      try:
        ok, records = reader.ok(), reader.num_records()
      finally:
        reader.close()
    except Exception:  # an unreadable file: reported below
      ok, records = False, 0
    hint = _retokenize_hint(self.source.name, self.source.directory)
    if not ok:
      raise DataError(f"{file}: shard of source {self.source.name!r} cannot be opened ({error}); "
                      f"it is truncated or no ArrayRecord file; {hint}. A shard that cannot be "
                      f"opened stops the run with either config.data.on_bad_record: skipping it "
                      f"would silently drop its {expected} documents") from None
    if records != expected:
      raise DataError(f"{file}: shard of source {self.source.name!r} holds {records} records, "
                      f"{self.source.directory / INDEX_FILE} lists {expected}; {hint}") from None
    self._whole_shards.add(shard)  # by the read threads: set.add is atomic


# Documents are read in blocks of this many (still in the per-document shuffled order) and the
# packer concatenates blocks: grain's fixed cost per element, paid once per block instead of per
# document, made the whole loader 1.4x faster (docs/results/data_loader.md).
DOCUMENTS_PER_BLOCK = 32


def _concatenate(documents: Sequence[np.ndarray]) -> dict[str, np.ndarray | int]:
  """A block of documents: their tokens, and how many were bad records (skipped, so empty)."""
  return {"tokens": np.concatenate(documents),
          "bad_records": sum(len(document) == 0 for document in documents)}


def _source_seed(seed: int, name: str) -> int:
  """A seed per source, so equal-sized sources are not shuffled alike."""
  return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "little")


class _BadRecordCounter(grain.DatasetIterator):
  """Passes blocks on to the packer as {"tokens"}, counting their bad records in its state."""

  def __init__(self, parent: grain.DatasetIterator, source: SourceShards):
    super().__init__(parent)
    self.source = source
    self.bad_records = 0
    self._empty_blocks = 0  # in a row; more than an epoch's worth means no record is readable
    self._max_empty_blocks = sum(source.documents) // DOCUMENTS_PER_BLOCK + 1

  def __next__(self) -> dict[str, np.ndarray]:
    block = next(self._parent)
    self.bad_records += block["bad_records"]
    self._empty_blocks = 0 if len(block["tokens"]) else self._empty_blocks + 1
    if self._empty_blocks > self._max_empty_blocks:
      raise DataError(f"source {self.source.name!r}: no record could be read in a whole epoch, all "
                      f"skipped as bad (config.data.on_bad_record=skip); "
                      f"{_retokenize_hint(self.source.name, self.source.directory)}")
    return {"tokens": block["tokens"]}

  def get_state(self) -> dict:
    return {"blocks": self._parent.get_state(), "bad_records": self.bad_records}

  def set_state(self, state: Mapping) -> None:
    if "blocks" not in state:  # a checkpoint from before the count: the reader's own state
      self._parent.set_state(state)
      self.bad_records = 0
      return
    self._parent.set_state(state["blocks"])
    self.bad_records = int(state["bad_records"])


class _Iterating(grain.IterDataset):
  """An IterDataset whose iterator is the one given (to stack grain's packer on ours)."""

  def __init__(self, iterator: grain.DatasetIterator):
    super().__init__()
    self._iterator = iterator

  def __iter__(self) -> grain.DatasetIterator:
    return self._iterator


class _PackedIterator(grain.DatasetIterator):
  """Pieces of the packer as (tokens, bad records in the blocks the packer has taken so far)."""

  def __init__(self, blocks: grain.DatasetIterator, source: SourceShards, sequence_length: int):
    self._counter = _BadRecordCounter(blocks, source)
    packer = ConcatThenSplitIterDataset(_Iterating(self._counter),
                                        length_struct={"tokens": sequence_length})
    super().__init__(iter(packer))

  def __next__(self) -> tuple[np.ndarray, int]:
    piece = next(self._parent)["tokens"]
    return piece, self._counter.bad_records

  def get_state(self) -> dict:
    return self._parent.get_state()  # holds the counter's state, which the packer restores

  def set_state(self, state: Mapping) -> None:
    self._parent.set_state(state)


class _Packed(grain.IterDataset):
  def __init__(self, blocks: grain.IterDataset, source: SourceShards, sequence_length: int):
    super().__init__(blocks)
    self.source, self.sequence_length = source, sequence_length

  def __iter__(self) -> grain.DatasetIterator:
    return _PackedIterator(self._parent.__iter__(), self.source, self.sequence_length)


def packed_sequences(source: SourceShards, *, vocab_size: int, sequence_length: int, seed: int,
                     read_threads: int, on_bad_record: str = "stop") -> grain.IterDataset:
  """A source's documents, shuffled per epoch and repeated, packed into sequence_length pieces.

  Its elements are (piece, bad records skipped so far): the count travels with the pieces and
  lives in the packer's state, so it is exact at every batch and after a restore.
  """
  documents = (grain.MapDataset.source(TokenRecords(source, vocab_size, on_bad_record))
               .shuffle(seed=_source_seed(seed, source.name))
               .repeat())
  blocks = documents.batch(DOCUMENTS_PER_BLOCK, batch_fn=_concatenate)
  read_options = grain.ReadOptions(num_threads=read_threads,
                                   prefetch_buffer_size=4 * read_threads)
  return _Packed(blocks.to_iter_dataset(read_options), source, sequence_length)


class _GlobalBatchRows:
  """grain batch_fn: this process's rows of a global batch, the global count of pieces per
  source, and per source the most bad records counted by its pieces (0 where it has none)."""

  def __init__(self, rows: slice, num_sources: int):
    self.rows, self.num_sources = rows, num_sources

  def __call__(self, pieces: Sequence[tuple[int, np.ndarray, int]]):
    sources = np.fromiter((source for source, _, _ in pieces), np.int32, len(pieces))
    tokens = np.stack([piece for _, piece, _ in pieces[self.rows]]).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "source": sources[self.rows]}
    bad_records = np.zeros(self.num_sources, np.int64)
    np.maximum.at(bad_records, sources, np.fromiter((bad for _, _, bad in pieces), np.int64,
                                                    len(pieces)))
    return batch, np.bincount(sources, minlength=self.num_sources), bad_records


def _tag_source(index: int):
  return lambda element: (index, *element)


class DataIterator:
  """This process's batches: {"inputs", "targets": int32 [rows, L], "source": int32 [rows]}.

  `source` indexes `sources`. get_state()/set_state() checkpoint the position exactly, and the
  count of bad records skipped (on_bad_record="skip") with it.
  """

  def __init__(self, dataset: grain.IterDataset, sources: Sequence[SourceShards],
               sequence_length: int):
    self.sources = list(sources)
    self.sequence_length = sequence_length
    self._iterator = iter(dataset)
    self._pieces = np.zeros(len(self.sources), np.int64)
    self._bad_records = np.zeros(len(self.sources), np.int64)

  def __iter__(self) -> DataIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch, pieces, bad_records = next(self._iterator)
    self._pieces += pieces
    np.maximum(self._bad_records, bad_records, out=self._bad_records)
    return batch

  def get_state(self) -> dict:
    return {"grain": self._iterator.get_state(),
            "pieces": self.sequences(),
            "bad_records": self.bad_records()}

  def set_state(self, state: Mapping) -> None:
    self._iterator.set_state(_slices_as_tuples(state["grain"]))
    self._pieces = np.array([state["pieces"].get(s.name, 0) for s in self.sources], np.int64)
    self._bad_records = np.array([state.get("bad_records", {}).get(s.name, 0)
                                  for s in self.sources], np.int64)

  def bad_records(self) -> dict[str, int]:
    """Bad records skipped so far per source (on_bad_record="skip"; re-counted every epoch)."""
    return {s.name: int(n) for s, n in zip(self.sources, self._bad_records, strict=True)}

  def sequences(self) -> dict[str, int]:
    """Sequences drawn from each source so far, over the global batch (the observed mixture)."""
    return {s.name: int(n) for s, n in zip(self.sources, self._pieces, strict=True)}

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


def sources_by_share(shares: Mapping[str, float]) -> list[str]:
  """The sources with a positive share, largest first, equal shares by name."""
  return sorted((name for name, share in shares.items() if share > 0),
                key=lambda name: (-shares[name], name))


def planned_epochs(sources: Sequence[SourceShards], shares: Mapping[str, float],
                   total_tokens: float) -> dict[str, float]:
  """Epochs of each source after `total_tokens` of training (paper Table 1's last column)."""
  total_share = sum(shares[s.name] for s in sources)
  return {s.name: total_tokens * shares[s.name] / total_share / s.tokens for s in sources}


def make_iterator(data_dir: str | Path, shares: Mapping[str, float], *, batch_size: int,
                  context_length: int, vocab_size: int, seed: int = 0,
                  process_index: int = 0, process_count: int = 1, read_threads: int = 2,
                  prefetch_batches: int = 2, total_tokens: float | None = None,
                  on_bad_record: str = "stop") -> DataIterator:
  """The batches of process `process_index` of `process_count`; sources are data_dir/<name>.

  A source with share 0 is not read (its directory need not exist); every other must have
  tokens, made with one tokenizer whose ids fit the model's vocabulary. on_bad_record: "stop"
  raises DataError at a bad record, "skip" drops its document and counts it (bad_records()).
  """
  if on_bad_record not in ON_BAD_RECORD:
    raise ValueError(f"on_bad_record={on_bad_record!r}: give one of {ON_BAD_RECORD}")
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
                                     read_threads=read_threads,
                                     on_bad_record=on_bad_record).map(_tag_source(i))
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
                       total_tokens=config.train.total_tokens,
                       on_bad_record=data.on_bad_record)
