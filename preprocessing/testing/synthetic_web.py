"""Synthetic web pages and toy CCNet models for benchmarks and tests (seeded, no download).

English-like and French-like prose from small word lists, shared boilerplate lines (the kind
CCNet's line dedup removes), short pages and character junk, written as a CommonCrawl WET file.
"""

from __future__ import annotations

import random
from pathlib import Path

from preprocessing.ccnet import language_id, train_lm, train_reference_classifier
from preprocessing.ccnet.normalize import normalize_for_lm
from preprocessing.document import Document
from preprocessing.wet import wet_bytes

ENGLISH = (
    "the of and to in is was that for on as with by he it at from his an were are which this "
    "be or has had not first one their its new after but who they two her she been other when "
    "there all during into school time may years more most only over city some world would "
    "where later up such used many can state about national out known university united then "
    "made river north century government history music early water people family season "
    "station village county american called series south war film member several including "
    "park team album released second three under between both through since number local "
    "large became each area company public church around well same same old built language"
).split()
FRENCH = (
    "le la les de des du et en un une est dans pour que qui sur par au avec plus son pas ce "
    "elle il sont ont été aux mais comme sa ses leur cette entre fait deux ville après aussi "
    "tout avant depuis sous nord sud pays première premier musique histoire famille rivière "
    "siècle gouvernement école eau peuple saison gare village église équipe album nombre"
).split()
BOILERPLATE = [
    "Subscribe to our newsletter to get the latest updates.",
    "All rights reserved. Terms and conditions apply to this website.",
    "Share this page on social media with your friends and family.",
    "Click here to read more articles from the archive section.",
]


def _sentence(rng: random.Random, words: list[str]) -> str:
  chosen = rng.choices(words, k=rng.randint(8, 20))
  return " ".join(chosen).capitalize() + "."


def _paragraph(rng: random.Random, words: list[str]) -> str:
  return " ".join(_sentence(rng, words) for _ in range(rng.randint(2, 5)))


def page(rng: random.Random, kind: str) -> str:
  """kind: english, french, short (English under 300 characters) or junk."""
  if kind == "short":
    return _sentence(rng, ENGLISH)
  if kind == "junk":
    return "\n".join("".join(rng.choices("qxzjkvw#@%0123456789 ", k=rng.randint(60, 160)))
                     for _ in range(rng.randint(4, 10)))
  words = ENGLISH if kind == "english" else FRENCH
  lines = [_paragraph(rng, words) for _ in range(rng.randint(3, 8))]
  if rng.random() < 0.5:
    lines.insert(0, rng.choice(BOILERPLATE))
  if rng.random() < 0.5:
    lines.append(rng.choice(BOILERPLATE))
  return "\n".join(lines)


KINDS = {"english": 0.7, "french": 0.15, "short": 0.05, "junk": 0.1}


def pages(rng: random.Random, count: int) -> list[tuple[str, str]]:
  kinds = rng.choices(list(KINDS), weights=list(KINDS.values()), k=count)
  return [(f"http://site{i % 997}.example/{kind}/{i}", page(rng, kind))
          for i, kind in enumerate(kinds)]


def write_wet(path: Path, count: int, seed: int = 0) -> list[tuple[str, str]]:
  generated = pages(random.Random(seed), count)
  path.write_bytes(wet_bytes(generated))
  return generated


def train_language_id(path: Path) -> Path:
  """A two-language fastText model (en, fr) on generated lines, in place of lid.176.bin."""
  rng = random.Random(0)
  lines = [f"__label__{lang} {_paragraph(rng, words)}\n"
           for _ in range(400) for lang, words in (("en", ENGLISH), ("fr", FRENCH))]
  train_file = path.parent / "lid_train.txt"
  train_file.write_text("".join(lines))
  return language_id.train_language_id(train_file, path)


def train_ccnet_models(directory: Path) -> dict[str, str]:
  """Toy versions of every model CCNet needs, as `preprocessing.run` flags."""
  import sentencepiece

  rng = random.Random(0)
  english = directory / "english.txt"
  english.write_text("\n".join(normalize_for_lm(_paragraph(rng, ENGLISH)) for _ in range(600)))
  sentencepiece.SentencePieceTrainer.train(
      input=str(english), model_prefix=str(directory / "sp"), vocab_size=120,
      model_type="unigram", minloglevel=2)  # unigram, as CCNet's per-language models
  spm = str(directory / "sp.model")
  # 120 pieces are too few for Chen-Goodman discounts, hence the fallback.
  train_lm.write_arpa(train_lm.estimate(train_lm.read_sentences([str(english)], spm), order=3,
                                        discount_fallback=True), directory / "en.arpa")
  for name, kind in (("wiki", "english"), ("cc", "junk")):
    (directory / f"{name}.jsonl").write_text("".join(
        Document(id=str(i), source="synthetic", text=page(rng, kind)).to_json() + "\n"
        for i in range(150)))
  train_reference_classifier.train([str(directory / "wiki.jsonl")], [str(directory / "cc.jsonl")],
                                   str(directory / "reference.bin"), epoch=5)
  return {"--lid_model": str(train_language_id(directory / "lid.bin")),
          "--lm_model": str(directory / "en.arpa"), "--spm_model": spm,
          "--reference_model": str(directory / "reference.bin")}
