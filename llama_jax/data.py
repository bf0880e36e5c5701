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

from llama_jax.config import tokens_per_step, total_steps
from llama_jax.tokenizer import Tokenizer

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

  @property
  def size(self) -> int:
    """Documents in the source."""
    return sum(self.documents)

  @property
  def fix(self) -> str:
    """What to do about a bad record of this source."""
    return _retokenize_hint(self.name, self.directory)

  def records(self, vocab_size: int, on_bad_record: str) -> TokenRecords:
    return TokenRecords(self, vocab_size, on_bad_record)

  def block(self, documents: Sequence[np.ndarray]) -> dict[str, np.ndarray | int]:
    return _concatenate(documents)


def bad_record(source, where: str, problem: str, on_bad_record: str,
               dtype: np.dtype) -> np.ndarray:
  """A bad record's document: DataError naming it ("stop"), or a warning and an empty array,
  which the packer skips and counts ("skip"; real documents are never empty)."""
  if on_bad_record == "stop":
    raise DataError(f"{where} {problem}; {source.fix}, or set --config.data.on_bad_record=skip "
                    "to drop bad records and count them") from None
  logging.warning("%s of source %r %s; skipped (config.data.on_bad_record=skip) and counted in "
                  "the data iterator's bad_records", where, source.name, problem)
  return np.empty(0, dtype)


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
    return bad_record(self.source, f"{self.source.files[shard]}: record {position}", problem,
                      self.on_bad_record, self.source.dtype)

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
    hint = self.source.fix
    if not ok:
      raise DataError(f"{file}: shard of source {self.source.name!r} cannot be opened ({error}); "
                      f"it is truncated or no ArrayRecord file; {hint}. A shard that cannot be "
                      f"opened stops the run with either config.data.on_bad_record: skipping it "
                      f"would silently drop its {expected} documents") from None
    if records != expected:
      raise DataError(f"{file}: shard of source {self.source.name!r} holds {records} records, "
                      f"{self.source.directory / INDEX_FILE} lists {expected}; {hint}") from None
    self._whole_shards.add(shard)  # by the read threads: set.add is atomic


@dataclasses.dataclass(frozen=True)
class TfdsSource:
  """One source read from a TensorFlow Datasets dataset (config.data.tfds.<source>): the text of
  each example, tokenized on the fly with the run's tokenizer, EOS appended as in token shards.

  Read with `tfds.data_source` (ArrayRecord files, random access; no TensorFlow needed).
  """

  name: str  # the Table 1 source it stands for
  dataset: str  # as TFDS names it, with its version: "c4/en:3.1.0"
  split: str
  feature: str
  data_dir: str | None
  tokenizer: Tokenizer
  examples: Sequence = dataclasses.field(repr=False)  # tfds.data_source of the split
  tokens = None  # unknown until every example is tokenized: epochs count documents instead

  @classmethod
  def open(cls, name: str, spec: Mapping, tokenizer: Tokenizer) -> TfdsSource:
    """Checks that the dataset, split and text feature exist, from the dataset's metadata."""
    dataset = spec["name"] + (f":{spec['version']}" if spec.get("version") else "")
    records = _tfds_records(dataset, spec["split"], spec.get("data_dir"))
    features = records.dataset_info.features
    if spec["feature"] not in features:
      raise DataError(f"data.tfds.{name}.feature={spec['feature']!r}: TFDS dataset {dataset} has "
                      f"features {sorted(features)}; name its text feature")
    if not len(records):
      raise DataError(f"TFDS dataset {dataset} split {spec['split']!r} has no examples; give "
                      f"source {name!r} another split or set its share to 0")
    return cls(name=name, dataset=dataset, split=spec["split"], feature=spec["feature"],
               data_dir=spec.get("data_dir"), tokenizer=tokenizer, examples=records)

  @property
  def size(self) -> int:
    """Examples in the split."""
    return len(self.examples)

  @property
  def fix(self) -> str:
    return (f"repair or rebuild TFDS dataset {self.dataset} split {self.split!r}"
            + (f" in {self.data_dir}" if self.data_dir else ""))

  def records(self, vocab_size: int, on_bad_record: str) -> TfdsTextRecords:
    return TfdsTextRecords(self, on_bad_record)

  def block(self, documents: Sequence[str | np.ndarray]) -> dict[str, np.ndarray | int]:
    """A block's texts tokenized in one call, on SentencePiece's threads (one text at a time
    holds the GIL: the read threads then share one core); bad records stay empty arrays."""
    texts = [i for i, document in enumerate(documents) if isinstance(document, str)]
    encoded = self.tokenizer.encode_batch([documents[i] for i in texts], eos=True)
    documents = list(documents)
    for i, ids in zip(texts, encoded, strict=True):
      documents[i] = np.asarray(ids, np.int32)
    return _concatenate(documents)


def _tfds_records(dataset: str, split: str, data_dir: str | None):
  """tfds.data_source of one split, never downloading; DataError naming what is missing."""
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise DataError("config.data.tfds names a TFDS source but tensorflow-datasets is not "
                    "installed: pip install 'llama-jax[tfds]'") from None
  try:
    return tfds.data_source(dataset, split=split, data_dir=data_dir, download=False)
  except Exception as error:  # TFDS raises many kinds: not found, unknown split, bad metadata
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # The first line says what failed; TFDS's last lines say where it looked (the catalog
    # listing between them is long).
    said = "; ".join(lines[:1] + [line for line in lines[-3:] if line not in lines[:1]
                                  and not line.startswith("-")])
    raise DataError(f"TFDS dataset {dataset} split {split!r} (data_dir={data_dir}) cannot be "
                    f"read: {said}. Build it first (`tfds build` or preprocessing.run "
                    f"--output_format=tfds) into data_dir") from None


class TfdsTextRecords(grain.sources.RandomAccessDataSource):
  """A TFDS source's examples as their text (TfdsSource.block tokenizes a block of them). A bad
  record (cannot be read or decoded, no UTF-8 text, empty text) follows config.data.on_bad_record
  like a shard's: DataError, or an empty token array."""

  def __init__(self, source: TfdsSource, on_bad_record: str = "stop"):
    if on_bad_record not in ON_BAD_RECORD:
      raise ValueError(f"on_bad_record={on_bad_record!r}: give one of {ON_BAD_RECORD}")
    self.source, self.on_bad_record = source, on_bad_record

  def __len__(self) -> int:
    return self.source.size

  def __getitem__(self, index: int) -> str | np.ndarray:
    try:
      text = self.source.examples[index][self.source.feature]
    except Exception as error:  # whatever the file or the feature decoder raised
      return self._bad(index, f"cannot be read ({type(error).__name__}: {error})")
    if isinstance(text, bytes):
      try:
        text = text.decode("utf-8")
      except UnicodeDecodeError as error:
        return self._bad(index, f"is not UTF-8 text ({error})")
    if not isinstance(text, str):
      return self._bad(index, f"holds {type(text).__name__}, not text")
    if not text:
      return self._bad(index, "has an empty text")
    return text

  def _bad(self, index: int, problem: str) -> np.ndarray:
    where = (f"TFDS {self.source.dataset} split {self.source.split!r}: example {index} "
             f"(feature {self.source.feature!r})")
    return bad_record(self.source, where, problem, self.on_bad_record, np.dtype(np.int32))


# Documents are read in blocks of this many (still in the per-document shuffled order) and the
# packer concatenates blocks: grain's fixed cost per element, paid once per block instead of per
# document, made the whole loader 1.4x faster (docs/results/data_loader.md).
DOCUMENTS_PER_BLOCK = 32


def _concatenate(documents: Sequence[np.ndarray]) -> dict[str, np.ndarray | int]:
  """A block of documents: their tokens, how many documents, and how many were bad records
  (skipped, so empty)."""
  return {"tokens": np.concatenate(documents), "documents": len(documents),
          "bad_records": sum(len(document) == 0 for document in documents)}


def _source_seed(seed: int, name: str) -> int:
  """A seed per source, so equal-sized sources are not shuffled alike."""
  return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "little")


class _BlockCounter(grain.DatasetIterator):
  """Passes blocks on to the packer as {"tokens"}, counting in its state the documents read and
  the bad records among them."""

  def __init__(self, parent: grain.DatasetIterator, source):
    super().__init__(parent)
    self.source = source
    self.bad_records = self.documents = 0
    self._empty_blocks = 0  # in a row; more than an epoch's worth means no record is readable
    self._max_empty_blocks = source.size // DOCUMENTS_PER_BLOCK + 1

  def __next__(self) -> dict[str, np.ndarray]:
    block = next(self._parent)
    self.bad_records += block["bad_records"]
    self.documents += block["documents"]
    self._empty_blocks = 0 if len(block["tokens"]) else self._empty_blocks + 1
    if self._empty_blocks > self._max_empty_blocks:
      raise DataError(f"source {self.source.name!r}: no record could be read in a whole epoch, all "
                      f"skipped as bad (config.data.on_bad_record=skip); {self.source.fix}")
    return {"tokens": block["tokens"]}

  def get_state(self) -> dict:
    return {"blocks": self._parent.get_state(), "bad_records": self.bad_records,
            "documents": self.documents}

  def set_state(self, state: Mapping) -> None:
    if "blocks" not in state:  # a checkpoint from before the count: the reader's own state
      self._parent.set_state(state)
      self.bad_records = self.documents = 0
      return
    self._parent.set_state(state["blocks"])
    self.bad_records = int(state["bad_records"])
    self.documents = int(state.get("documents", 0))


class _Iterating(grain.IterDataset):
  """An IterDataset whose iterator is the one given (to stack grain's packer on ours)."""

  def __init__(self, iterator: grain.DatasetIterator):
    super().__init__()
    self._iterator = iterator

  def __iter__(self) -> grain.DatasetIterator:
    return self._iterator


class _PackedIterator(grain.DatasetIterator):
  """Pieces of the packer as (tokens, bad records and documents in the blocks the packer has
  taken so far)."""

  def __init__(self, blocks: grain.DatasetIterator, source, sequence_length: int):
    self._counter = _BlockCounter(blocks, source)
    packer = ConcatThenSplitIterDataset(_Iterating(self._counter),
                                        length_struct={"tokens": sequence_length})
    super().__init__(iter(packer))

  def __next__(self) -> tuple[np.ndarray, int, int]:
    piece = next(self._parent)["tokens"]
    return piece, self._counter.bad_records, self._counter.documents

  def get_state(self) -> dict:
    return self._parent.get_state()  # holds the counter's state, which the packer restores

  def set_state(self, state: Mapping) -> None:
    self._parent.set_state(state)


class _Packed(grain.IterDataset):
  def __init__(self, blocks: grain.IterDataset, source, sequence_length: int):
    super().__init__(blocks)
    self.source, self.sequence_length = source, sequence_length

  def __iter__(self) -> grain.DatasetIterator:
    return _PackedIterator(self._parent.__iter__(), self.source, self.sequence_length)


def packed_sequences(source, *, vocab_size: int, sequence_length: int, seed: int,
                     read_threads: int, on_bad_record: str = "stop") -> grain.IterDataset:
  """A source's documents, shuffled per epoch and repeated, packed into sequence_length pieces.

  `source` is a SourceShards or a TfdsSource. Its elements are (piece, bad records skipped so
  far, documents read so far): the counts travel with the pieces and live in the packer's state,
  so they are exact at every batch and after a restore.
  """
  documents = (grain.MapDataset.source(source.records(vocab_size, on_bad_record))
               .shuffle(seed=_source_seed(seed, source.name))
               .repeat())
  blocks = documents.batch(DOCUMENTS_PER_BLOCK, batch_fn=source.block)
  read_options = grain.ReadOptions(num_threads=read_threads,
                                   prefetch_buffer_size=4 * read_threads)
  return _Packed(blocks.to_iter_dataset(read_options), source, sequence_length)


class _GlobalBatchRows:
  """grain batch_fn: this process's rows of a global batch, the global count of pieces per
  source, and per source the most bad records and documents counted by its pieces (0 where it
  has none)."""

  def __init__(self, rows: slice, num_sources: int):
    self.rows, self.num_sources = rows, num_sources

  def __call__(self, pieces: Sequence[tuple[int, np.ndarray, int, int]]):
    sources = np.fromiter((piece[0] for piece in pieces), np.int32, len(pieces))
    tokens = np.stack([piece[1] for piece in pieces[self.rows]]).astype(np.int32)
    batch = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "source": sources[self.rows]}
    counts = np.zeros((2, self.num_sources), np.int64)  # bad records, documents
    for column in (0, 1):
      np.maximum.at(counts[column], sources, np.fromiter(
          (piece[2 + column] for piece in pieces), np.int64, len(pieces)))
    return batch, np.bincount(sources, minlength=self.num_sources), counts


def _tag_source(index: int):
  return lambda element: (index, *element)


class DataIterator:
  """This process's batches: {"inputs", "targets": int32 [rows, L], "source": int32 [rows]}.

  `source` indexes `sources`. get_state()/set_state() checkpoint the position exactly, and the
  counts of bad records skipped (on_bad_record="skip") and of documents read with it.
  """

  def __init__(self, dataset: grain.IterDataset, sources: Sequence, sequence_length: int):
    self.sources = list(sources)
    self.sequence_length = sequence_length
    self._iterator = iter(dataset)
    self._pieces = np.zeros(len(self.sources), np.int64)
    self._counts = np.zeros((2, len(self.sources)), np.int64)  # bad records, documents read

  def __iter__(self) -> DataIterator:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch, pieces, counts = next(self._iterator)
    self._pieces += pieces
    np.maximum(self._counts, counts, out=self._counts)
    return batch

  def get_state(self) -> dict:
    return {"grain": self._iterator.get_state(), "pieces": self.sequences(),
            "bad_records": self.bad_records(), "documents": self.documents()}

  def set_state(self, state: Mapping) -> None:
    self._iterator.set_state(_slices_as_tuples(state["grain"]))
    self._pieces = np.array([state["pieces"].get(s.name, 0) for s in self.sources], np.int64)
    self._counts = np.array([[state.get(key, {}).get(s.name, 0) for s in self.sources]
                             for key in ("bad_records", "documents")], np.int64)

  def _by_source(self, counts: np.ndarray) -> dict[str, int]:
    return {s.name: int(n) for s, n in zip(self.sources, counts, strict=True)}

  def bad_records(self) -> dict[str, int]:
    """Bad records skipped so far per source (on_bad_record="skip"; re-counted every epoch)."""
    return self._by_source(self._counts[0])

  def documents(self) -> dict[str, int]:
    """Documents read so far per source, into the packer (a few batches ahead of training)."""
    return self._by_source(self._counts[1])

  def sequences(self) -> dict[str, int]:
    """Sequences drawn from each source so far, over the global batch (the observed mixture)."""
    return self._by_source(self._pieces)

  def epochs(self) -> dict[str, float]:
    """Passes over each source so far: its tokens drawn into batches / its tokens; for a TFDS
    source, whose token count is unknown, documents read / its documents."""
    return {s.name: (float(n) * self.sequence_length / s.tokens if s.tokens
                     else float(read) / s.size)
            for s, n, read in zip(self.sources, self._pieces, self._counts[1], strict=True)}

  def close(self) -> None:
    self._iterator.close()


def _slices_as_tuples(state):
  """Undoes JSON's tuple -> list in grain's packer state: ConcatThenSplit tells "no remainder"
  by comparing its slices with the tuple (-1, -1), so a list there would lose a block."""
  if isinstance(state, dict):
    return {key: ({k: tuple(v) for k, v in value.items()} if key == "remainder_slices"
                  else _slices_as_tuples(value)) for key, value in state.items()}
  return state


def process_rows(batch_size: int, process_index: int, process_count: int) -> slice:
  """Rows [p*B/P, (p+1)*B/P) of a global batch: process p's."""
  if batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} does not divide over {process_count} processes")
  rows = batch_size // process_count
  return slice(process_index * rows, (process_index + 1) * rows)


class SyntheticBatches:
  """Random tokens in place of a corpus (config.data.synthetic), for smoke tests and benchmarks
  without data: batch n is a function of (seed, n) alone, so it restores exactly. Its one
  source, "synthetic", stands for the whole mixture."""

  NAME = "synthetic"

  def __init__(self, *, batch_size: int, context_length: int, vocab_size: int, seed: int = 0,
               process_index: int = 0, process_count: int = 1):
    self.rows = process_rows(batch_size, process_index, process_count)
    self.batch_size, self.context_length = batch_size, context_length
    self.vocab_size, self.seed = vocab_size, seed
    self.batches = 0

  def __iter__(self) -> SyntheticBatches:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([self.seed, self.batches])
    tokens = rng.integers(0, self.vocab_size, (self.batch_size, self.context_length + 1),
                          np.int32)[self.rows]
    self.batches += 1
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
            "source": np.zeros(len(tokens), np.int32)}

  def get_state(self) -> dict:
    return {"synthetic_batches": self.batches}

  def set_state(self, state: Mapping) -> None:
    if "synthetic_batches" not in state:
      raise DataError("the checkpoint's data state is a corpus's, not synthetic data's: resume "
                      "with the run's own config.data")
    self.batches = int(state["synthetic_batches"])

  def bad_records(self) -> dict[str, int]:
    return {}

  def sequences(self) -> dict[str, int]:
    return {self.NAME: self.batches * self.batch_size}

  def close(self) -> None:
    pass


def sources_by_share(shares: Mapping[str, float]) -> list[str]:
  """The sources with a positive share, largest first, equal shares by name."""
  return sorted((name for name, share in shares.items() if share > 0),
                key=lambda name: (-shares[name], name))


def planned_epochs(sources: Sequence, shares: Mapping[str, float],
                   total_tokens: float) -> dict[str, float]:
  """Epochs of each source of known size in tokens after `total_tokens` of training (paper
  Table 1's last column); TFDS sources, of unknown size, are left out."""
  total_share = sum(shares[s.name] for s in sources)
  return {s.name: total_tokens * shares[s.name] / total_share / s.tokens
          for s in sources if s.tokens}


def open_sources(data_dir: str | Path | None, shares: Mapping[str, float], *,
                 vocab_size: int, tfds: Mapping[str, Mapping] | None = None,
                 tokenizer: str | Path | None = None) -> list:
  """The sources with a positive share: TfdsSource where `tfds[name]["name"]` is set, else the
  token shards in data_dir/<name>; all of one tokenizer whose ids fit the model's vocabulary."""
  if any(share < 0 for share in shares.values()) or not any(shares.values()):
    raise ValueError(f"data shares {dict(shares)} must be >= 0 with at least one positive")
  from_tfds = {name for name, share in shares.items()
               if share > 0 and (tfds or {}).get(name, {}).get("name")}
  from_shards = [name for name, share in shares.items() if share > 0 and name not in from_tfds]
  if from_shards and data_dir is None:
    raise ValueError(f"config.data.dir is not set: give --config.data.dir=DIR holding one "
                     f"directory of token shards per source (preprocessing.tokenize_shards), "
                     f"for {', '.join(from_shards)}; or read them from TFDS (data.tfds)")
  run_tokenizer = None
  if from_tfds:
    if not tokenizer:
      raise ValueError(f"data.tfds sources ({', '.join(sorted(from_tfds))}) are tokenized on the "
                       "fly: give the SentencePiece model with --config.data.tokenizer=FILE")
    run_tokenizer = Tokenizer(tokenizer)
  sources = [TfdsSource.open(name, tfds[name], run_tokenizer) if name in from_tfds
             else SourceShards.read(name, Path(data_dir) / name)
             for name, share in shares.items() if share > 0]
  shards = [s for s in sources if isinstance(s, SourceShards)]
  made_by = {s.tokenizer_sha256 for s in shards}
  run_sha256 = run_tokenizer.sha256 if run_tokenizer is not None else None  # reads the file
  if run_sha256:
    made_by.add(run_sha256)
  if len(made_by) > 1:
    raise DataError("sources were tokenized with different tokenizers: "
                    + ", ".join(f"{s.name} ({s.tokenizer_sha256[:12]})" for s in shards)
                    + (f"; data.tokenizer {tokenizer} ({run_sha256[:12]}) for the TFDS sources"
                       if run_sha256 else ""))
  for s in shards:
    if s.vocab_size > vocab_size:
      raise DataError(f"{s.directory / INDEX_FILE}: made with a tokenizer of {s.vocab_size} "
                      f"pieces, more than the model's vocabulary of {vocab_size}; "
                      f"{s.fix} with the model's tokenizer")
  if run_tokenizer is not None and run_tokenizer.vocab_size > vocab_size:
    raise DataError(f"data.tokenizer {tokenizer} has {run_tokenizer.vocab_size} pieces, more than "
                    f"the model's vocabulary of {vocab_size}")
  return sources


def make_iterator(data_dir: str | Path | None, shares: Mapping[str, float], *, batch_size: int,
                  context_length: int, vocab_size: int, seed: int = 0,
                  process_index: int = 0, process_count: int = 1, read_threads: int = 2,
                  prefetch_batches: int = 2, total_tokens: float | None = None,
                  on_bad_record: str = "stop", tfds: Mapping[str, Mapping] | None = None,
                  tokenizer: str | Path | None = None) -> DataIterator:
  """The batches of process `process_index` of `process_count` (sources as open_sources).

  A source with share 0 is not read (its directory need not exist). on_bad_record: "stop"
  raises DataError at a bad record, "skip" drops its document and counts it (bad_records()).
  """
  if on_bad_record not in ON_BAD_RECORD:
    raise ValueError(f"on_bad_record={on_bad_record!r}: give one of {ON_BAD_RECORD}")
  rows = process_rows(batch_size, process_index, process_count)
  sources = open_sources(data_dir, shares, vocab_size=vocab_size, tfds=tfds, tokenizer=tokenizer)
  if total_tokens:
    logging.info("planned epochs per source over %.3g tokens: %s", total_tokens,
                 {k: round(v, 2) for k, v in planned_epochs(sources, shares, total_tokens).items()})

  pieces = {s.name: packed_sequences(s, vocab_size=vocab_size,
                                     sequence_length=context_length + 1, seed=seed,
                                     read_threads=read_threads,
                                     on_bad_record=on_bad_record).map(_tag_source(i))
            for i, s in enumerate(sources)}
  mixed = grain.IterDataset.mix(pieces, {s.name: shares[s.name] for s in sources})
  batches = mixed.batch(batch_size, batch_fn=_GlobalBatchRows(rows, len(sources)))
  return DataIterator(ThreadPrefetchIterDataset(batches, prefetch_buffer_size=prefetch_batches),
                      sources, context_length + 1)


def iterator_from_config(config, process_index: int | None = None,
                         process_count: int | None = None) -> DataIterator | SyntheticBatches:
  """make_iterator (or SyntheticBatches) with the settings of a full config (`data`, `model`,
  `train` sections)."""
  if process_index is None or process_count is None:
    process_index, process_count = jax.process_index(), jax.process_count()
  data, train = config.data, config.train
  if data.synthetic:
    return SyntheticBatches(batch_size=config.train.batch_size,
                            context_length=config.model.context_length,
                            vocab_size=config.model.vocab_size, seed=data.seed,
                            process_index=process_index, process_count=process_count)
  return make_iterator(data.dir, dict(data.shares), batch_size=config.train.batch_size,
                       context_length=config.model.context_length,
                       vocab_size=config.model.vocab_size, seed=data.seed,
                       process_index=process_index, process_count=process_count,
                       read_threads=data.read_threads, prefetch_batches=data.prefetch_batches,
                       total_tokens=(total_steps(config) * tokens_per_step(config)
                                     if train.steps or train.total_tokens else None),
                       on_bad_record=data.on_bad_record, tfds=data.tfds.to_dict(),
                       tokenizer=data.tokenizer)
