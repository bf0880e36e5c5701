"""llama_jax.tokenizer on Meta's tokenizer.model and on a small BPE model trained here."""

import gzip
import json
import random
from pathlib import Path

import pytest

from llama_jax import tokenizer
from llama_jax.tokenizer import Tokenizer

META_MODEL = Path(__file__).parent / "data" / "llama-tokenizer" / "tokenizer.model"

HARD_STRINGS = [
    "日本語の文章と中文的句子",
    "emoji 🦙🎉 family 👩‍👩‍👧 flag 🇫🇷",
    "combining: e\u0301 a\u0308 \u1100\u1161 (decomposed)",
    "\ttabs\t\tand   runs of spaces   ",
    "  leading and trailing  ",
    "line\nbreaks\r\n\n\nend",
    "numbers 12345, 3.14159 and 1,000,000",
    "no normalisation: \ufb01 \u2460 \uff26\uff55\uff4c\uff4c \u00a0nbsp",
    "scripts: ру́сский Ελληνικά עברית العربية हिन्दी",
    "\x00\x07 control \x7f",
    "",
    " ",
    "\n",
]

WORDS = ("the river runs past the old city wall where a market opens every morning and "
         "people buy bread fish and fruit before the long day of work begins").split()


def varied_texts(count: int = 200, seed: int = 0) -> list[str]:
  """Empty texts, short ones and long lines, of words, digits, whitespace and HARD_STRINGS."""
  rng = random.Random(seed)
  parts = WORDS + HARD_STRINGS + ["12345", "3.14", "1,000,000", "€", "🦙", "\t", "  "]
  return [rng.choice([" ", "", "\n"]).join(rng.choices(parts, k=length))
          for length in rng.choices([0, 1, 3, 30, 300, 2000], k=count)]


@pytest.fixture(scope="module")
def meta():
  return Tokenizer(META_MODEL)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
  """A 400-piece BPE model from ~10 KB of text, trained through the command line."""
  directory = tmp_path_factory.mktemp("small_tokenizer")
  rng = random.Random(0)
  lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 14)))
           + f" in 2023 page 12345 item {rng.randint(0, 999)}" for _ in range(120)]
  (directory / "plain.txt").write_text("\n".join(lines[:60]) + "\n")
  with gzip.open(directory / "docs.jsonl.gz", "wt") as f:
    for i in range(0, 60, 3):
      f.write(json.dumps({"id": str(i), "text": "\n".join(lines[60 + i:63 + i])}) + "\n")
  tokenizer.main(["train", f"--input={directory / 'plain.txt'},{directory / '*.jsonl.gz'}",
                  f"--model_prefix={directory / 'small'}", "--vocab_size=400",
                  "--num_threads=1"])
  return Tokenizer(directory / "small.model")


@pytest.fixture(params=["meta", "small"])
def any_tokenizer(request):
  return request.getfixturevalue(request.param)


def test_special_ids(any_tokenizer):
  assert (any_tokenizer.bos_id, any_tokenizer.eos_id) == (1, 2)
  ids = any_tokenizer.encode("the river", bos=True, eos=True)
  assert ids[0] == 1 and ids[-1] == 2 and 0 not in ids


def test_encode_batch_is_encode_of_each(any_tokenizer):
  texts = varied_texts()
  assert "" in texts and max(map(len, texts)) > 10_000
  for bos, eos in [(False, False), (True, False), (False, True), (True, True)]:
    expected = [any_tokenizer.encode(text, bos=bos, eos=eos) for text in texts]
    assert any_tokenizer.encode_batch(texts, bos=bos, eos=eos) == expected
  for num_threads in (1, 3):
    assert any_tokenizer.encode_batch(tuple(texts), num_threads=num_threads) == [
        any_tokenizer.encode(text) for text in texts]
  assert any_tokenizer.encode_batch([]) == []


def test_vocab_sizes(meta, small):
  assert meta.vocab_size == 32000
  assert small.vocab_size == 400


@pytest.mark.parametrize("text", HARD_STRINGS)
def test_round_trip(any_tokenizer, text):
  ids = any_tokenizer.encode(text)
  assert 0 not in ids  # byte fallback: nothing becomes <unk>
  assert any_tokenizer.decode(ids) == text


def test_sentencepiece_space_mark_is_the_one_exception(any_tokenizer):
  # U+2581 is SentencePiece's own symbol for a space; Meta's model decodes it as " " too.
  assert any_tokenizer.decode(any_tokenizer.encode("\u2581x")) == " x"


@pytest.mark.parametrize("number", ["12345", "2023", "1000000"])
def test_numbers_split_into_digits(any_tokenizer, number):
  pieces = any_tokenizer.pieces(f"page {number} end")
  start = pieces.index(number[0], 1)
  assert pieces[start:start + len(number)] == list(number)


def _multi_digit_pieces(model):
  pieces = (model._processor.id_to_piece(i) for i in range(model.vocab_size))
  return [p for p in pieces if not p.startswith("<0x") and sum(c.isdigit() for c in p) > 1]


def test_no_multi_digit_piece_learned(small, tmp_path):
  # "12345" and "2023" occur in every training line: without split_digits BPE merges them.
  assert not _multi_digit_pieces(small)
  assert "▁the" in small.pieces("the")  # BPE did merge the frequent words
  (tmp_path / "in.txt").write_text("\n".join(f"page 12345 in 2023 no {i}" for i in range(50)))
  tokenizer.train([str(tmp_path / "in.txt")], tmp_path / "m", vocab_size=300, num_threads=1,
                  split_digits=False)
  assert _multi_digit_pieces(Tokenizer(tmp_path / "m.model"))


def test_unknown_characters_fall_back_to_utf8_bytes(small):
  for char in ["🦙", "語", "\u0301", "€"]:
    pieces = [p for p in small.pieces(char) if p != "▁"]
    assert pieces == [f"<0x{b:02X}>" for b in char.encode("utf-8")]


def test_whitespace_kept_as_meta(meta, small):
  # identity normaliser, add_dummy_prefix true, remove_extra_whitespaces false (Meta's spec)
  for model in (meta, small):
    assert model.pieces("the")[0].startswith("▁")
    assert "".join(model.pieces("a  b")).replace("▁", " ") == " a  b"


def test_meta_model_known_ids(meta):
  assert meta.encode("Hello") == [15043]
  assert meta.encode("12345") == [29871, 29896, 29906, 29941, 29946, 29945]


def test_training_samples_the_input(tmp_path, capfd):
  lines = [" ".join(random.Random(i).choices(WORDS, k=8)) for i in range(400)]
  (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
  # minloglevel=0: SentencePiece's log level is process-wide, and other tests train quietly.
  tokenizer.train([str(tmp_path / "in.txt")], tmp_path / "m", vocab_size=300,
                  input_sentence_size=150, num_threads=1, minloglevel=0)
  assert "Sampled 150 sentences from 400 sentences" in capfd.readouterr().err
  assert Tokenizer(tmp_path / "m.model").vocab_size == 300


def test_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="no files match"):
    tokenizer.train([str(tmp_path / "missing*.txt")], tmp_path / "m")
  (tmp_path / "bad.jsonl").write_text('{"id": 1}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:1: not a JSON object with a `text` field"):
    tokenizer.train([str(tmp_path / "bad.jsonl")], tmp_path / "m", vocab_size=300)
  with pytest.raises(FileNotFoundError, match="nothing.model does not exist"):
    Tokenizer(tmp_path / "nothing.model")
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(ValueError, match="junk.model is not a SentencePiece model"):
    Tokenizer(tmp_path / "junk.model")


def test_other_special_ids_are_refused(tmp_path):
  (tmp_path / "in.txt").write_text("\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(40)))
  tokenizer.train([str(tmp_path / "in.txt")], tmp_path / "m", vocab_size=300, num_threads=1,
                  unk_id=2, bos_id=0, eos_id=1)
  with pytest.raises(ValueError, match=r"m.model: unk/bos/eos ids are \(2, 0, 1\)"):
    Tokenizer(tmp_path / "m.model")
