"""llama_jax.data: packing, the Table 1 mixture, epochs, determinism, process slices, restore."""

import collections
import json

import numpy as np
import pytest

from benchmarks.data_loader import write_source
from llama_jax import data
from llama_jax.config import base_config

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


def test_truncated_shard_names_the_file(tmp_path):
  [shard] = write_source(tmp_path / "c4", _documents(np.random.default_rng(0), 0, 2000),
                         num_shards=1)
  shard.write_bytes(shard.read_bytes()[:1000])
  with pytest.raises(data.DataError, match=f"{shard}: record \\d+ cannot be read"):
    next(_loader(tmp_path, {"c4": 1.0}))


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
  batch = next(data.iterator_from_config(config, process_index=1, process_count=2))
  assert batch["inputs"].shape == (config.train.batch_size // 2, config.model.context_length)
