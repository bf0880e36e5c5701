"""TensorFlow Datasets in and out: a corpus written as a TFDS dataset (preprocessing.tfds_output),
read back by TFDS itself and by the loader as a training source (llama_jax.data.TfdsSource), the
same sequences as token shards of the same documents, bad records, resuming a killed run."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from llama_jax import data, tokenizer
from llama_jax.testing.training_runs import (
  SMALL_TINY,
  config_flags,
  losses,
  start_training,
  wait_for_step,
)
from preprocessing import run, tfds_output, tokenize_shards

GITHUB = "examples/mini_corpus/github/github-mini.jsonl.gz"
VOCAB = SMALL_TINY["model.vocab_size"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """The mini corpus's GitHub source as JSONL and as a TFDS dataset (one pipeline run each), a
  small tokenizer trained on it, and token shards of the same documents with the TFDS dataset's
  shard count."""
  root = tmp_path_factory.mktemp("corpus")
  run.main(["--source=github", f"--input={GITHUB}", f"--output={root / 'jsonl'}",
            "--num_shards=1", "--compression=none"])
  stats = run.main(["--source=github", f"--input={GITHUB}", f"--output={root / 'tfds'}",
                    "--output_format=tfds", "--num_shards=3"])
  model = tokenizer.train([str(root / "jsonl" / "documents-*")], root / "spm",
                          vocab_size=VOCAB, minloglevel=1)
  for name in ("github", "books"):  # books: the same documents, for a mixture of two sources
    tokenize_shards.main([f"--input={root / 'jsonl' / 'documents-*'}",
                          f"--output={root / 'tokens' / name}", f"--tokenizer={model}",
                          "--num_shards=3"])
  return {"root": root, "tfds_dir": root / "tfds", "stats": stats, "tokenizer": model,
          "documents": [json.loads(line) for path in sorted((root / "jsonl").glob("documents-*"))
                        for line in open(path)]}


def _tfds_spec(corpus, **overrides):
  return {"github": {"name": "llama_corpus/github", "version": None, "split": "train",
                     "feature": "text", "data_dir": str(corpus["tfds_dir"]), **overrides}}


def _loader(corpus, from_tfds=True, **kwargs):
  settings = dict(batch_size=4, context_length=48, vocab_size=VOCAB, seed=3)
  if from_tfds:
    return data.make_iterator(None, {"github": 1.0}, tfds=_tfds_spec(corpus),
                              tokenizer=corpus["tokenizer"], **{**settings, **kwargs})
  return data.make_iterator(corpus["root"] / "tokens", {"github": 1.0}, **{**settings, **kwargs})


def test_the_corpus_as_a_tfds_dataset_reads_back_through_tfds(corpus):
  version_dir = corpus["tfds_dir"] / "llama_corpus" / "github" / "1.0.0"
  builder = tfds.builder_from_directory(str(version_dir))
  by_name = tfds.data_source("llama_corpus/github", data_dir=str(corpus["tfds_dir"]),
                             split="train", download=False)
  from_builder = builder.as_data_source("train")
  written = corpus["stats"]["documents_written"]
  assert builder.info.splits["train"].num_examples == len(by_name) == written > 100
  assert builder.info.splits["train"].num_shards == 3
  assert sorted(builder.info.features) == ["id", "metadata", "source", "text"]
  examples = [from_builder[i] for i in range(len(from_builder))]
  assert [example["id"] for example in examples] == [by_name[i]["id"] for i in range(written)]
  # The same documents as the JSONL output of the same pipeline, metadata included.
  expected = {doc["id"]: doc for doc in corpus["documents"]}
  assert len(expected) == written
  for example in examples:
    doc = expected[example["id"].decode()]
    assert example["text"].decode() == doc["text"]
    assert example["source"].decode() == doc["source"] == "github"
    assert json.loads(example["metadata"]) == doc["metadata"]
  assert json.loads((version_dir / "stats.json").read_text())["documents_written"] == written


def test_a_tfds_source_gives_the_sequences_of_token_shards_of_the_same_documents(corpus):
  index = json.loads((corpus["root"] / "tokens" / "github" / "index.json").read_text())
  assert index["documents"] == corpus["stats"]["documents_written"]
  # 60 x 8 x 1025 tokens: more than an epoch of the source (index["tokens"]).
  batches, settings = 60, {"batch_size": 8, "context_length": 1024}
  assert index["tokens"] < batches * 8 * 1025
  from_tfds, from_shards = _loader(corpus, **settings), _loader(corpus, False, **settings)
  try:
    for _ in range(batches):
      expected = next(from_shards)
      batch = next(from_tfds)
      np.testing.assert_array_equal(batch["inputs"], expected["inputs"])
      np.testing.assert_array_equal(batch["targets"], expected["targets"])
    assert from_tfds.sequences() == from_shards.sequences() == {"github": batches * 8}
    # A TFDS source counts epochs in documents read, token shards in tokens drawn.
    assert from_shards.epochs()["github"] > 1
    assert from_tfds.epochs()["github"] == from_tfds.documents()["github"] / index["documents"]
    assert from_tfds.epochs()["github"] > 1
  finally:
    from_tfds.close()
    from_shards.close()


def test_a_restored_tfds_iterator_continues_exactly(corpus):
  first = _loader(corpus)
  for _ in range(7):
    next(first)
  state = json.loads(json.dumps(first.get_state()))  # as a checkpoint stores it
  expected = [next(first)["inputs"] for _ in range(10)]
  first.close()
  restored = _loader(corpus)
  restored.set_state(state)
  for batch in expected:
    np.testing.assert_array_equal(next(restored)["inputs"], batch)
  restored.close()


@pytest.fixture(scope="module")
def bad_example_dataset(tmp_path_factory):
  """A TFDS dataset of 40 examples, of which example 17 has an empty text."""
  data_dir = tmp_path_factory.mktemp("bad_tfds")
  directory = tfds_output.dataset_dir(str(data_dir), "github")
  (data_dir / "llama_corpus" / "github" / "1.0.0").mkdir(parents=True)
  encode = tfds_output.ExampleEncoder()
  examples = [(f"{i:03d}", encode(
      {"id": f"{i:03d}", "source": "github", "metadata": "{}",
       "text": "" if i == 17 else f"def f{i}(x):\n  return x + {i}\n"})) for i in range(40)]
  shard = tfds_output.write_shard((0, examples), directory, 1)
  tfds_output.write_metadata([shard], directory, 1, "github")
  return data_dir


def test_a_bad_tfds_example_stops_the_run_naming_it(corpus, bad_example_dataset):
  spec = _tfds_spec(corpus, data_dir=str(bad_example_dataset))
  loader = data.make_iterator(None, {"github": 1.0}, tfds=spec, tokenizer=corpus["tokenizer"],
                              batch_size=2, context_length=8, vocab_size=VOCAB)
  with pytest.raises(data.DataError, match=r"llama_corpus/github split 'train': example 17 "
                                           r"\(feature 'text'\) has an empty text.*on_bad_record"):
    for _ in range(200):
      next(loader)
  loader.close()


def test_a_skipped_bad_tfds_example_is_counted(corpus, bad_example_dataset):
  spec = _tfds_spec(corpus, data_dir=str(bad_example_dataset))
  loader = data.make_iterator(None, {"github": 1.0}, tfds=spec, tokenizer=corpus["tokenizer"],
                              batch_size=2, context_length=8, vocab_size=VOCAB,
                              on_bad_record="skip")
  for _ in range(200):  # 200 x 2 x 9 tokens: a few epochs of 40 short documents
    next(loader)
  epochs_read = loader.documents()["github"] // 40
  assert epochs_read >= 2 and loader.bad_records()["github"] in (epochs_read, epochs_read + 1)
  loader.close()


@pytest.mark.parametrize("change, message", [
    ({"name": "llama_corpus/wikipedia"}, "llama_corpus/wikipedia split 'train'.*cannot be read"),
    ({"split": "validation"}, "Unknown split 'validation'"),
    ({"feature": "content"}, r"feature='content'.*\['id', 'metadata', 'source', 'text'\]"),
])
def test_a_tfds_source_that_cannot_be_read_is_named(corpus, change, message):
  with pytest.raises(data.DataError, match=message):
    data.open_sources(None, {"github": 1.0}, vocab_size=VOCAB, tfds=_tfds_spec(corpus, **change),
                      tokenizer=corpus["tokenizer"])


def test_tfds_sources_need_the_tokenizer_of_the_shards(corpus, tmp_path):
  with pytest.raises(ValueError, match="give the SentencePiece model"):
    data.open_sources(None, {"github": 1.0}, vocab_size=VOCAB, tfds=_tfds_spec(corpus))
  other = tokenizer.train([str(corpus["root"] / "jsonl" / "documents-*")], tmp_path / "other",
                          vocab_size=VOCAB - 12, minloglevel=1)
  with pytest.raises(data.DataError, match="different tokenizers"):
    data.open_sources(corpus["root"] / "tokens", {"github": 1.0, "books": 1.0}, vocab_size=VOCAB,
                      tfds=_tfds_spec(corpus), tokenizer=other)


def _mixture_run(corpus, workdir, **overrides):
  settings = {**SMALL_TINY, "train.steps": 16, "optim.peak_lr": 1e-2,
              "checkpoint.every_steps": 4, "data.dir": corpus["root"] / "tokens",
              "data.tokenizer": corpus["tokenizer"],
              "data.tfds.github.name": "llama_corpus/github",
              "data.tfds.github.data_dir": corpus["tfds_dir"], **overrides}
  return start_training(workdir, config_flags(settings, ("github", "books")),
                        open(workdir.parent / f"{workdir.name}.log", "w"))


def test_training_on_tfds_and_token_shards_resumes_bitwise_after_a_kill(corpus, tmp_path):
  whole = _mixture_run(corpus, tmp_path / "whole")
  assert whole.wait(timeout=300) == 0, (tmp_path / "whole.log").read_text()[-3000:]
  killed = _mixture_run(corpus, tmp_path / "killed")
  wait_for_step(tmp_path / "killed", 9, killed)
  killed.kill()  # SIGKILL: no chance to save
  killed.wait()
  assert max(losses(tmp_path / "killed")) < 16
  resumed = _mixture_run(corpus, tmp_path / "killed")
  assert resumed.wait(timeout=300) == 0, (tmp_path / "killed.log").read_text()[-3000:]
  assert losses(tmp_path / "killed") == losses(tmp_path / "whole")  # floats compared exactly
  assert sorted(losses(tmp_path / "whole")) == list(range(1, 17))
  last = [json.loads(line) for line in open(tmp_path / "whole" / "metrics.jsonl")][-1]
  assert last["sequences/github"] + last["sequences/books"] == 16 * SMALL_TINY["train.batch_size"]
  assert last["sequences/github"] == last["sequences/books"]  # shares 1 : 1

