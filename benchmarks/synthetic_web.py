"""Synthetic web pages for preprocessing benchmarks and end-to-end tests (seeded, no download).

English-like and French-like prose from small word lists, shared boilerplate lines (the kind
CCNet's line dedup removes), short pages and character junk, written as a CommonCrawl WET file.
"""

from __future__ import annotations

import random
from pathlib import Path

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
