"""fastText steps of CCNet: language id, minimum length and the reference classifier."""

import pickle
import random
from pathlib import Path

import pytest

from preprocessing.ccnet import train_reference_classifier
from preprocessing.ccnet.language_id import LanguageIdentifier, min_length, train_language_id
from preprocessing.ccnet.reference_classifier import ReferenceFilter
from preprocessing.document import Document, Drop
from preprocessing.testing import synthetic_web


@pytest.fixture(scope="module")
def lid_model(tmp_path_factory):
  return synthetic_web.train_language_id(tmp_path_factory.mktemp("lid") / "lid.bin")


def _doc(text):
  return Document(id="x", source="ccnet", text=text)


def test_min_length_boundary():
  assert min_length(_doc("a" * 300)).text == "a" * 300
  assert min_length(_doc("a" * 299)) == Drop("too_short")


def test_language_id_keeps_english_and_names_the_rest(lid_model):
  rng = random.Random(1)
  identify = pickle.loads(pickle.dumps(LanguageIdentifier(str(lid_model))))
  english = identify(_doc(synthetic_web.page(rng, "english")))
  assert english.metadata["language"] == "en" and english.metadata["language_score"] >= 0.5
  pickle.dumps(identify)  # Beam may pickle a filter again after it loaded its model
  french = _doc(synthetic_web.page(rng, "french"))
  assert identify(french) == Drop("language_fr")
  assert french.metadata["language"] == "fr"
  strict = LanguageIdentifier(str(lid_model), threshold=1.01)
  assert strict(_doc(synthetic_web.page(rng, "english"))) == Drop("language_low_confidence")


MINI_LID_DATA = Path(__file__).parent.parent / "examples/mini_corpus/language_id/train.txt"
# Held-out paragraphs from pages of the mini CommonCrawl file, which the training lines leave out
# (doc.rust-lang.org: book/ch04-01-what-is-ownership.html, rust-by-example/ja/fn.html,
# rust-by-example/es/primitives.html).
HELD_OUT = {
    "en": "Because ownership is a new concept for many programmers, it does take some time to get "
          "used to. The good news is that the more experienced you become with Rust and the rules "
          "of the ownership system, the easier you’ll find it to naturally develop code that is "
          "safe and efficient. Keep at it!",
    "ja": "関数はfnキーワードを用いて定義することができます。"
          "引数は変数と同様に型を指定する必要があり、"
          "もし関数が値を返すならば->の後にその型も指定する必要があります。",
    "es": "Rust proporciona acceso a una amplia variedad de primitivas. Algunos ejemplos son:",
}


def test_language_id_trained_on_the_mini_corpus_labels_held_out_paragraphs(tmp_path):
  training = MINI_LID_DATA.read_text(encoding="utf-8")
  assert all(text not in training for text in HELD_OUT.values())
  model = train_language_id(MINI_LID_DATA, tmp_path / "lid.bin")
  identify = LanguageIdentifier(str(model))
  for language, text in HELD_OUT.items():
    doc = _doc(text)
    result = identify(doc)
    assert doc.metadata["language"] == language, (language, doc.metadata)
    assert (result is doc) == (language == "en")
  again = train_language_id(MINI_LID_DATA, tmp_path / "again.bin")
  assert again.read_bytes() == model.read_bytes()  # thread=1, seed=0: the same model every run


def test_missing_model_fails_when_the_filter_is_built(tmp_path):
  with pytest.raises(FileNotFoundError, match="lid.176.bin"):
    LanguageIdentifier(str(tmp_path / "missing.bin"))
  with pytest.raises(FileNotFoundError, match="train_reference_classifier"):
    ReferenceFilter(str(tmp_path / "missing.bin"))


def _write_jsonl(path, texts):
  path.write_text("".join(_doc(t).to_json() + "\n" for t in texts))
  return str(path)


def test_reference_classifier_trains_and_filters(tmp_path):
  rng = random.Random(2)
  positives = _write_jsonl(tmp_path / "wiki.jsonl",
                           [synthetic_web.page(rng, "english") for _ in range(150)])
  negatives = _write_jsonl(tmp_path / "cc.jsonl",
                           [synthetic_web.page(rng, "junk") for _ in range(150)])
  report = train_reference_classifier.train([positives], [negatives], str(tmp_path / "ref.bin"),
                                            valid_fraction=0.2, epoch=5)
  assert report["held_out_examples"] == 60
  assert min(report["held_out_precision_recall"]) > 0.9
  keep = pickle.loads(pickle.dumps(ReferenceFilter(str(tmp_path / "ref.bin"))))
  reference = keep(_doc(synthetic_web.page(rng, "english")))
  assert reference.metadata["reference_score"] > 0.5
  assert keep(_doc(synthetic_web.page(rng, "junk"))) == Drop("not_reference")


def test_reference_trainer_command_line(tmp_path, capsys):
  rng = random.Random(3)
  positives = _write_jsonl(tmp_path / "wiki.jsonl",
                           [synthetic_web.page(rng, "english") for _ in range(100)])
  negatives = _write_jsonl(tmp_path / "cc.jsonl",
                           [synthetic_web.page(rng, "junk") for _ in range(100)])
  output = tmp_path / "ref.bin"
  train_reference_classifier.main([f"--positives={positives}", f"--negatives={negatives}",
                                   f"--output={output}", "--epoch=5", "--dim=20"])
  assert output.is_file()
  assert "held_out_precision_recall" in capsys.readouterr().out
  bad = tmp_path / "bad.jsonl"
  bad.write_text("{broken\n")
  with pytest.raises(SystemExit):
    train_reference_classifier.main([f"--positives={positives}", f"--negatives={bad}",
                                     f"--output={output}"])
  assert "bad.jsonl:1: not valid JSON" in capsys.readouterr().err


def test_reference_trainer_reports_bad_input(tmp_path):
  good = _write_jsonl(tmp_path / "good.jsonl", ["some text"])
  with pytest.raises(FileNotFoundError, match="missing.jsonl not found"):
    train_reference_classifier.train([good], [str(tmp_path / "missing.jsonl")], "x.bin")
  bad = tmp_path / "bad.jsonl"
  bad.write_text(_doc("fine").to_json() + "\n{broken\n")
  with pytest.raises(ValueError, match="bad.jsonl:2: not valid JSON"):
    train_reference_classifier.train([good], [str(bad)], "x.bin")
  with pytest.raises(ValueError, match="valid_fraction"):
    train_reference_classifier.train([good], [good], "x.bin", valid_fraction=1.0)
  empty = tmp_path / "empty.jsonl"
  empty.write_text("\n")
  with pytest.raises(ValueError, match=r"no documents in .*empty.jsonl.* for __label__cc"):
    train_reference_classifier.train([good], [str(empty)], "x.bin")
