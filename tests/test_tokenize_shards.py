"""preprocessing.tokenize_shards end to end (DirectRunner), then read back by llama_jax.data."""

import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import sentencepiece
from array_record.python.array_record_module import ArrayRecordReader
from test_tokenizer import varied_texts

from llama_jax import data
from llama_jax.tokenizer import Tokenizer
from preprocessing import tokenize_shards
from preprocessing.document import Document

META_MODEL = str(Path(__file__).parent / "data" / "llama-tokenizer" / "tokenizer.model")

TEXTS = {
    "a": "The river runs past the old city wall.",
    "b": "Numbers 12345 and 3.14, tabs\tand  spaces.",
    "c": "日本語の文章 🦙 e\u0301",
    "d": "Line one\nLine two\n\n",
    "e": " ",
    "f": "A longer document. " * 40,
}


def _read_shard(path):
  reader = ArrayRecordReader(str(path))
  records = reader.read(list(range(reader.num_records())))
  reader.close()
  return [np.frombuffer(r, "<u2").tolist() for r in records]


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
  root = tmp_path_factory.mktemp("tokenize")
  lines = [json.dumps({"id": k, "source": "wikipedia", "text": v}) for k, v in TEXTS.items()]
  with gzip.open(root / "documents-00000-of-00002.jsonl.gz", "wt") as f:
    f.write("\n".join(lines[:3]) + "\n" + '{"id": "empty", "text": ""}\n')
  with gzip.open(root / "documents-00001-of-00002.jsonl.gz", "wt") as f:
    f.write("\n".join(lines[3:]) + "\n{not json\n" + '{"id": "x", "body": "no text"}\n')
  output = root / "tokens" / "wikipedia"
  stats = tokenize_shards.main([f"--input={root / 'documents-*.jsonl.gz'}",
                                f"--output={output}", f"--tokenizer={META_MODEL}",
                                "--num_shards=3"])
  return output, stats


def test_records_are_token_ids_with_eos(tokenized):
  output, _ = tokenized
  index = json.loads((output / data.INDEX_FILE).read_text())
  reference = sentencepiece.SentencePieceProcessor(model_file=META_MODEL)
  expected = {k: reference.encode(v) + [2] for k, v in TEXTS.items()}
  records = []
  for shard in index["shards"]:
    shard_records = _read_shard(output / shard["file"])
    assert len(shard_records) == shard["documents"]
    assert sum(map(len, shard_records)) == shard["tokens"]
    # Each document sits in the shard its id hashes to, in id order.
    ids = sorted(k for k in TEXTS if tokenize_shards.shard_of(k, 3) == int(shard["file"][7:12]))
    assert shard_records == [expected[k] for k in ids]
    records += shard_records
  assert sorted(records) == sorted(expected.values())
  assert index["documents"] == len(TEXTS)
  assert index["tokens"] == sum(map(len, expected.values()))
  assert (index["vocab_size"], index["eos_id"], index["dtype"]) == (32000, 2, "uint16")


def test_stats_count_drops_and_malformed_input(tokenized):
  output, stats = tokenized
  assert stats["documents_read"] == len(TEXTS) + 1
  assert stats["documents_written"] == len(TEXTS)
  assert stats["dropped"] == {"empty_text": 1}
  assert stats["malformed"] == {"bad_json_record": 2}
  assert json.loads((output / "stats.json").read_text())["tokens"] == stats["tokens"]


def test_loader_gives_back_the_documents(tokenized):
  output, _ = tokenized
  iterator = data.make_iterator(output.parent, {"wikipedia": 1.0}, batch_size=4,
                                context_length=32, vocab_size=32000)
  tokens = json.loads((output / data.INDEX_FILE).read_text())["tokens"]
  stream = []
  while len(stream) < tokens:
    batch = next(iterator)
    pieces = np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)
    stream += pieces.reshape(-1).tolist()
  reference = sentencepiece.SentencePieceProcessor(model_file=META_MODEL)
  ends = [i + 1 for i, t in enumerate(stream[:tokens]) if t == 2]
  docs = [reference.decode(stream[a:b - 1]) for a, b in zip([0] + ends, ends, strict=False)]
  assert sorted(docs) == sorted(TEXTS.values())


def test_batches_give_the_ids_of_one_by_one_encoding():
  docs = [Document(id=str(i), source="", text=text) for i, text in enumerate(varied_texts())]
  tokenize = tokenize_shards.TokenizeDocuments(META_MODEL, 3)
  tokenize.setup()
  one_by_one = Tokenizer(META_MODEL)
  assert list(tokenize.process(docs)) == [
      (tokenize_shards.shard_of(doc.id, 3),
       (doc.id, np.asarray(one_by_one.encode(doc.text, eos=True), "<u2").tobytes()))
      for doc in docs if doc.text]
  assert list(tokenize.process([])) == []


def test_output_does_not_depend_on_batch_size(tokenized, tmp_path, monkeypatch):
  output, _ = tokenized
  # 16 characters: most documents alone in a batch, some batches empty (BatchElements yields
  # the empty batch before a document larger than the batch size).
  monkeypatch.setattr(tokenize_shards, "BATCH_CHARS", 16)
  tokenize_shards.main([f"--input={output.parent.parent / 'documents-*.jsonl.gz'}",
                        f"--output={tmp_path}", f"--tokenizer={META_MODEL}", "--num_shards=3"])
  files = sorted(p.name for p in output.iterdir() if p.name != "stats.json")
  assert sorted(p.name for p in tmp_path.iterdir() if p.name != "stats.json") == files
  for name in files:
    assert (tmp_path / name).read_bytes() == (output / name).read_bytes(), name


def test_bad_arguments(tmp_path, capsys):
  with pytest.raises(SystemExit):
    tokenize_shards.main([f"--input={tmp_path}/*.jsonl", f"--output={tmp_path / 'out'}",
                          f"--tokenizer={tmp_path / 'missing.model'}"])
  assert "missing.model does not exist" in capsys.readouterr().err
  with pytest.raises(SystemExit, match="no files match"):
    tokenize_shards.main([f"--input={tmp_path}/*.jsonl", f"--output={tmp_path / 'out'}",
                          f"--tokenizer={META_MODEL}"])
