"""llama_jax.data: packing, the Table 1 mixture, epochs, determinism, process slices, restore."""

import collections
import json
import re

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter

from llama_jax import data
from llama_jax.config import base_config
from preprocessing.testing.token_shards import write_source

EOS = 2
# Table 1: sampling share (%) and epochs over 1.4T tokens.
TABLE_1 = {"ccnet": (67.0, 1.10), "c4": (15.0, 1.06), "github": (4.5, 0.64),
           "wikipedia": (4.5, 2.45), "books": (4.5, 2.23), "arxiv": (2.5, 1.06),
           "stackexchange": (2.0, 1.03)}
SHARES = {name: share for name, (share, _) in TABLE_1.items()}


def _documents(rng, source_index, tokens, max_length=12):
  """Documents of about `tokens` tokens; document j of source s is [base+j]*n + [EOS], so every
  document, and the source it came from, can be told from its tokens."""
  docs, total = [], 0
  while total < tokens:
    n = int(rng.integers(1, max_length))
    docs.append(np.array([1000 * source_index + 3 + len(docs)] * n + [EOS]))
    total += n + 1
  return docs


def _write(root, tokens_per_source, num_shards=3):
  """Token shards of each source, sources numbered in the given order."""
  for i, (name, tokens) in enumerate(tokens_per_source.items()):
    write_source(root / name, _documents(np.random.default_rng(i), i, tokens),
                 num_shards=num_shards)


def _loader(root, shares, **kwargs):
  settings = dict(batch_size=8, context_length=16, vocab_size=32000, seed=0)
  return data.make_iterator(root, shares, **{**settings, **kwargs})


def _pieces(batch):
  """The context_length + 1 tokens each row was cut from."""
  return np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)


def _split_documents(stream):
  ends = np.flatnonzero(stream == EOS) + 1
  return [tuple(doc) for doc in np.split(stream, ends)[:-1]]


@pytest.fixture(scope="module")
def one_source(tmp_path_factory):
  root = tmp_path_factory.mktemp("one_source")
  docs = _documents(np.random.default_rng(0), 0, 600)
  write_source(root / "wikipedia", docs, num_shards=3)
  return root, docs


def test_batches_are_packed_documents_with_eos(one_source):
  root, docs = one_source
  iterator = _loader(root, {"wikipedia": 1.0})
  tokens = sum(len(d) for d in docs)
  batches = [next(iterator) for _ in range(2 * tokens // (8 * 17) + 2)]
  for batch in batches:
    assert batch["inputs"].shape == batch["targets"].shape == (8, 16)
    assert batch["inputs"].dtype == np.int32
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
  stream = np.concatenate([_pieces(b) for b in batches]).reshape(-1)
  # First epoch: every document exactly once, whole (tails carried over into the next piece),
  # in a shuffled order; the second epoch follows at once, in another order.
  first = _split_documents(stream[:tokens])
  assert sorted(first) == sorted(tuple(d) for d in docs)
  assert first != [tuple(d) for d in docs]
  second = _split_documents(stream[tokens:2 * tokens])
  assert sorted(second) == sorted(first) and second != first


def test_mixture_shares_over_10k_sequences(tmp_path):
  _write(tmp_path, {name: 300 for name in SHARES})
  iterator = _loader(tmp_path, SHARES, batch_size=100, context_length=8)
  counts = collections.Counter()
  for _ in range(100):
    batch = next(iterator)
    for source, piece in zip(batch["source"], _pieces(batch), strict=True):
      # The label is the source the tokens really came from.
      assert set(((piece - 3) // 1000)[piece != EOS].tolist()) <= {source}
    counts.update(batch["source"].tolist())
  names = [s.name for s in iterator.sources]
  assert iterator.sequences() == {name: counts[i] for i, name in enumerate(names)}
  total = sum(SHARES.values())
  for index, name in enumerate(names):
    assert counts[index] / 10_000 == pytest.approx(SHARES[name] / total, rel=0.01), name


def test_epochs_per_source_follow_table_1(tmp_path):
  # Sources sized as the paper's: tokens proportional to share / epochs.
  scale = 300
  sizes = {name: round(share / epochs * scale) for name, (share, epochs) in TABLE_1.items()}
  _write(tmp_path, sizes)
  iterator = _loader(tmp_path, SHARES, batch_size=10, context_length=16)
  sources = {s.name: s for s in iterator.sources}
  planned = data.planned_epochs(list(sources.values()), SHARES, 100 * scale)
  steps = 100 * scale // (10 * 17)
  seen = collections.Counter()
  for _ in range(steps):
    batch = next(iterator)
    for source, piece in zip(batch["source"], _pieces(batch), strict=True):
      seen[iterator.sources[source].name] += len(piece)
  for name, (_, epochs) in TABLE_1.items():
    assert planned[name] == pytest.approx(epochs, rel=0.05)
    assert iterator.epochs()[name] == pytest.approx(seen[name] / sources[name].tokens)
    assert iterator.epochs()[name] == pytest.approx(epochs, abs=0.15), name
  assert 2 < iterator.epochs()["wikipedia"] < 3 and 2 < iterator.epochs()["books"] < 3


def test_same_seed_same_batches_other_seed_others(one_source):
  root, _ = one_source
  first = [next(_loader(root, {"wikipedia": 1.0}))["inputs"] for _ in range(2)]
  np.testing.assert_array_equal(first[0], first[1])
  again, other = _loader(root, {"wikipedia": 1.0}), _loader(root, {"wikipedia": 1.0}, seed=1)
  a, b = [next(again)["inputs"] for _ in range(3)], [next(other)["inputs"] for _ in range(3)]
  assert not all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def test_process_slices_cover_the_global_batch(tmp_path):
  _write(tmp_path, {"c4": 400, "books": 400})
  shares = {"c4": 3.0, "books": 1.0}
  whole = _loader(tmp_path, shares)
  parts = [_loader(tmp_path, shares, process_index=p, process_count=4) for p in range(4)]
  for _ in range(5):
    batch = next(whole)
    slices = [next(part) for part in parts]
    for key in ("inputs", "targets", "source"):
      assert all(len(s[key]) == 2 for s in slices)  # rows [2p, 2p + 2)
      np.testing.assert_array_equal(np.concatenate([s[key] for s in slices]), batch[key])
  with pytest.raises(ValueError, match="batch_size 8 does not divide over 3 processes"):
    _loader(tmp_path, shares, process_count=3)


def test_restored_iterator_continues_exactly(tmp_path):
  _write(tmp_path, {"c4": 500, "wikipedia": 150})
  shares = {"c4": 2.0, "wikipedia": 1.0}
  iterator = _loader(tmp_path, shares, batch_size=4, context_length=7)
  for _ in range(9):  # mid-epoch, mid-document
    next(iterator)
  state = json.loads(json.dumps(iterator.get_state()))  # as a checkpoint stores it
  expected = [next(iterator) for _ in range(12)]  # crosses into the second epoch of wikipedia
  restored = _loader(tmp_path, shares, batch_size=4, context_length=7)
  next(restored)  # a used iterator is restored as well as a fresh one
  restored.set_state(state)
  epochs_at_state = restored.epochs()
  for want in expected:
    got = next(restored)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])
  assert restored.epochs() == iterator.epochs() != epochs_at_state
  assert iterator.epochs()["wikipedia"] > 1


def test_restore_from_the_first_state(one_source):
  # grain's packer marks "no remainder" with a tuple that JSON turns into a list.
  root, _ = one_source
  state = json.loads(json.dumps(_loader(root, {"wikipedia": 1.0}).get_state()))
  restored = _loader(root, {"wikipedia": 1.0})
  restored.set_state(state)
  np.testing.assert_array_equal(next(restored)["inputs"],
                                next(_loader(root, {"wikipedia": 1.0}))["inputs"])


def test_zero_share_sources_are_not_read(tmp_path):
  _write(tmp_path, {"c4": 200})
  iterator = _loader(tmp_path, {"c4": 1.0, "books": 0.0})  # no books directory at all
  assert [s.name for s in iterator.sources] == ["c4"]
  assert set(next(iterator)["source"].tolist()) == {0}


def test_empty_or_missing_source_with_a_share_is_an_error(tmp_path):
  write_source(tmp_path / "arxiv", [])
  with pytest.raises(data.DataError, match=r"arxiv/index.json: source 'arxiv' has no tokens"):
    _loader(tmp_path, {"arxiv": 1.0})
  with pytest.raises(data.DataError, match=r"github/index.json does not exist.*tokenize_shards"):
    _loader(tmp_path, {"github": 1.0})


def test_missing_shard_names_the_file(tmp_path):
  shards = write_source(tmp_path / "c4", _documents(np.random.default_rng(0), 0, 200))
  shards[1].unlink()
  with pytest.raises(data.DataError, match=f"{shards[1]}: shard listed in .* is missing"):
    _loader(tmp_path, {"c4": 1.0})


def test_corrupt_record_names_the_file(tmp_path):
  [shard] = write_source(tmp_path / "c4", _documents(np.random.default_rng(0), 0, 2000),
                         num_shards=1)
  raw = bytearray(shard.read_bytes())
  raw[1000] ^= 0xFF  # inside a record's chunk (records fill the first ~20 KB)
  shard.write_bytes(bytes(raw))
  iterator = _loader(tmp_path, {"c4": 1.0})
  with pytest.raises(data.DataError, match=f"{shard}: record \\d+ cannot be read"):
    for _ in range(200):
      next(iterator)


@pytest.mark.parametrize("on_bad_record", ["stop", "skip"])
def test_truncated_shard_names_the_file_in_both_modes(tmp_path, on_bad_record):
  [shard] = write_source(tmp_path / "c4", _documents(np.random.default_rng(0), 0, 2000),
                         num_shards=1)
  shard.write_bytes(shard.read_bytes()[:1000])
  with pytest.raises(data.DataError, match=f"{shard}: shard of source 'c4' cannot be opened .*"
                                           "stops the run with either config.data.on_bad_record"):
    next(_loader(tmp_path, {"c4": 1.0}, on_bad_record=on_bad_record))


def test_token_outside_the_vocabulary_names_the_file(tmp_path):
  docs = _documents(np.random.default_rng(0), 0, 100)
  docs[5] = np.array([7, 40000, EOS])  # a bad id that a 32000-piece tokenizer cannot make
  write_source(tmp_path / "c4", docs, num_shards=1)
  iterator = _loader(tmp_path, {"c4": 1.0}, vocab_size=32000)
  with pytest.raises(data.DataError, match=r"c4/tokens-.*: record 5 holds token id 40000, "
                                           r"outside the model's vocabulary of 32000"):
    for _ in range(20):
      next(iterator)


def test_shards_of_a_larger_tokenizer_are_refused(tmp_path):
  _write(tmp_path, {"c4": 100})
  with pytest.raises(data.DataError, match=r"c4/index.json: made with a tokenizer of 32000 "
                                           r"pieces, more than the model's vocabulary of 100"):
    _loader(tmp_path, {"c4": 1.0}, vocab_size=100)


def test_config_section_is_table_1(tmp_path, load_config):
  config = base_config()
  assert dict(config.data.shares) == SHARES
  assert sum(config.data.shares.values()) == pytest.approx(100)
  with pytest.raises(ValueError, match="config.data.dir is not set"):
    data.iterator_from_config(config, 0, 1)
  _write(tmp_path, {name: 300 for name in SHARES})
  config = load_config("tiny")
  config.data.dir = str(tmp_path)
  assert config.data.on_bad_record == "stop"
  batch = next(data.iterator_from_config(config, process_index=1, process_count=2))
  assert batch["inputs"].shape == (config.train.batch_size // 2, config.model.context_length)
  config.data.on_bad_record = "drop"
  with pytest.raises(ValueError, match="on_bad_record='drop': give one of \\('stop', 'skip'\\)"):
    data.iterator_from_config(config, 0, 1)


# A bad record mid-run (config.data.on_bad_record): one record of the second of two shards is
# damaged in one of these ways; the message names the shard and the record's index in it.
DAMAGES = {"flipped_byte": "cannot be read \\(.*hash mismatch",
           "odd_length": "is corrupt \\(7 bytes is no whole number of 2-byte uint16 tokens\\)",
           "out_of_vocabulary": "holds token id 40000, outside the model's vocabulary of 32000",
           "empty": "is empty"}


def _records(shard):
  reader = ArrayRecordReader(str(shard))
  try:
    return reader.read_all()
  finally:
    reader.close()


def _unreadable_records(shard):
  reader = ArrayRecordReader(str(shard))
  unreadable = []
  for position in range(reader.num_records()):
    try:
      reader.read([position])
    except RuntimeError:
      unreadable.append(position)
  reader.close()
  return unreadable


def _damage(shard, damage, position=4):
  """Damages one record of `shard`; returns its index in the shard and the document it held."""
  records = _records(shard)
  originals = [tuple(np.frombuffer(record, "<u2").tolist()) for record in records]
  if damage == "flipped_byte":
    raw = bytearray(shard.read_bytes())
    raw[1000] ^= 0xFF  # inside some record's chunk (the records fill the first few KB)
    shard.write_bytes(bytes(raw))
    [position] = _unreadable_records(shard)
  else:
    records[position] = {"odd_length": np.array([7, 7, 7], "<u2").tobytes() + b"\x07",
                         "out_of_vocabulary": np.array([7, 40000, EOS], "<u2").tobytes(),
                         "empty": b""}[damage]
    writer = ArrayRecordWriter(str(shard), data.SHARD_WRITER_OPTIONS)
    for record in records:
      writer.write(record)
    writer.close()
  return position, originals[position]


@pytest.fixture(scope="module")
def bad_record_docs():
  return _documents(np.random.default_rng(3), 0, 1500)


@pytest.mark.parametrize("damage", DAMAGES)
def test_bad_record_stops_the_run_naming_shard_and_record(tmp_path, bad_record_docs, damage):
  shard = write_source(tmp_path / "c4", bad_record_docs, num_shards=2)[1]
  position, _ = _damage(shard, damage)
  iterator = _loader(tmp_path, {"c4": 1.0})
  message = (f"{re.escape(str(shard))}: record {position} {DAMAGES[damage]}.*; re-run "
             "`python -m preprocessing.tokenize_shards .*` for source 'c4', or set "
             "--config.data.on_bad_record=skip")
  with pytest.raises(data.DataError, match=message):
    for _ in range(100):  # about 4 epochs
      next(iterator)


def _bad_records_seen(order, kept_index, bad, steps, piece_tokens):
  """Bad records counted after each batch: those in the blocks of DOCUMENTS_PER_BLOCK documents
  (in reading order) that the packer has taken, up to the one with the batch's last token."""
  ends = np.cumsum([len(order[j]) for j in kept_index])
  counts = []
  for step in range(1, steps + 1):
    last_document = kept_index[np.searchsorted(ends, step * piece_tokens - 1, side="right")]
    blocks_end = (last_document // data.DOCUMENTS_PER_BLOCK + 1) * data.DOCUMENTS_PER_BLOCK
    counts.append(sum(document == bad for document in order[:blocks_end]))
  return counts


@pytest.mark.parametrize("damage", ["flipped_byte", "odd_length"])
def test_skipped_bad_record_is_dropped_counted_and_restored(tmp_path, bad_record_docs, damage):
  write_source(tmp_path / "clean" / "c4", bad_record_docs, num_shards=2)
  damaged = write_source(tmp_path / "damaged" / "c4", bad_record_docs, num_shards=2)
  _, bad = _damage(damaged[1], damage)
  # Expected: the clean dataset's documents in its reading order, less every copy of the bad
  # one, packed into 8 x 17-token pieces per batch.
  steps, piece_tokens = 30, 8 * 17  # about 2.7 epochs
  clean = _loader(tmp_path / "clean", {"c4": 1.0})
  order = _split_documents(np.concatenate([_pieces(next(clean)).reshape(-1)
                                           for _ in range(steps + 10)]))
  kept_index = [j for j, document in enumerate(order) if document != bad]
  expected = np.concatenate([order[j] for j in kept_index])[:steps * piece_tokens]
  expected_counts = _bad_records_seen(order, kept_index, bad, steps, piece_tokens)
  restore_at = expected_counts.index(1)  # the first batch after the bad record was skipped

  skip = _loader(tmp_path / "damaged", {"c4": 1.0}, on_bad_record="skip")
  assert skip.bad_records() == {"c4": 0}
  batches, counts = [], []
  for step in range(steps):
    batches.append(next(skip))
    counts.append(skip.bad_records()["c4"])
    if step == restore_at:
      state = json.loads(json.dumps(skip.get_state()))  # as a checkpoint stores it
  np.testing.assert_array_equal(np.concatenate([_pieces(b).reshape(-1) for b in batches]),
                                expected)
  assert counts == expected_counts and counts[restore_at] == 1 and counts[-1] >= 2  # per epoch

  restored = _loader(tmp_path / "damaged", {"c4": 1.0}, on_bad_record="skip")
  restored.set_state(state)
  assert restored.bad_records() == {"c4": 1}
  for want, count in zip(batches[restore_at + 1:], counts[restore_at + 1:], strict=True):
    np.testing.assert_array_equal(next(restored)["inputs"], want["inputs"])
    assert restored.bad_records() == {"c4": count}
  with pytest.raises(ValueError, match="on_bad_record='ignore': give one of"):
    _loader(tmp_path / "damaged", {"c4": 1.0}, on_bad_record="ignore")


def test_a_source_with_no_good_record_is_an_error_when_skipping(tmp_path):
  [shard] = write_source(tmp_path / "c4", _documents(np.random.default_rng(0), 0, 300),
                         num_shards=1)
  records = _records(shard)
  writer = ArrayRecordWriter(str(shard), data.SHARD_WRITER_OPTIONS)
  for _ in records:
    writer.write(b"\x07")  # half a token each
  writer.close()
  with pytest.raises(data.DataError, match="source 'c4': no record could be read in a whole "
                                           "epoch, all skipped as bad"):
    next(_loader(tmp_path, {"c4": 1.0}, on_bad_record="skip"))


@pytest.mark.parametrize("on_bad_record", ["stop", "skip"])
def test_a_shard_truncated_while_training_reads_it(tmp_path, bad_record_docs, on_bad_record):
  # The loader has the shard open when another process cuts it: its records past the cut read
  # back empty, which is caught like any bad record (named, then stopped or skipped and counted).
  shard = write_source(tmp_path / "c4", bad_record_docs, num_shards=2)[1]
  iterator = _loader(tmp_path, {"c4": 1.0}, on_bad_record=on_bad_record)
  for _ in range(3):
    next(iterator)
  with open(shard, "r+b") as f:
    f.truncate(200)
  if on_bad_record == "stop":
    with pytest.raises(data.DataError, match=f"{re.escape(str(shard))}: record \\d+ is empty"):
      for _ in range(100):
        next(iterator)
  else:
    for _ in range(100):
      next(iterator)
    assert iterator.bad_records()["c4"] > 0


def test_synthetic_batches_are_a_function_of_seed_and_step_and_restore():
  def batches(seed=0, process_index=0, process_count=1, state=None, count=4):
    synthetic = data.SyntheticBatches(batch_size=8, context_length=16, vocab_size=100, seed=seed,
                                      process_index=process_index, process_count=process_count)
    if state:
      synthetic.set_state(state)
    return [next(synthetic) for _ in range(count)], synthetic

  first, iterator = batches()
  assert first[0]["inputs"].shape == (8, 16) and first[0]["inputs"].dtype == np.int32
  assert 0 <= min(b["inputs"].min() for b in first) and max(b["inputs"].max() for b in first) < 100
  np.testing.assert_array_equal(first[0]["inputs"][:, 1:], first[0]["targets"][:, :-1])
  assert not np.array_equal(first[0]["inputs"], first[1]["inputs"])
  assert iterator.get_state() == {"synthetic_batches": 4}
  assert iterator.sequences() == {"synthetic": 32}
  again, _ = batches(state={"synthetic_batches": 2}, count=2)
  np.testing.assert_array_equal(again[1]["inputs"], first[3]["inputs"])
  other_seed, _ = batches(seed=1)
  assert not np.array_equal(other_seed[0]["inputs"], first[0]["inputs"])
  halves = [batches(process_index=p, process_count=2)[0][0]["inputs"] for p in (0, 1)]
  np.testing.assert_array_equal(np.concatenate(halves), first[0]["inputs"])
  with pytest.raises(data.DataError, match="not synthetic data's"):
    batches(state={"grain": {}, "pieces": {}})
