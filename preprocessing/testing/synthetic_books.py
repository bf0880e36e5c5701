"""Synthetic book files for `--source=books` benchmarks and tests (seeded, no download).

Books cycle through KINDS, so file `book-NNNNN-<kind>.txt[.gz]` says what it holds and what the
pipeline must do with it (kept unless named in DROPPED or MALFORMED):
  gutenberg           modern Gutenberg file ("*** START OF THE ..." / "*** END OF THE ..."), UTF-8
  books3              Books3-style plain text, gzip-compressed
  gutenberg_this      "THIS PROJECT GUTENBERG" markers, CRLF line ends, gzip-compressed
  near_duplicate      Books3-style copy of the `gutenberg` book 3 files before, 0.2% of words
                      changed
  gutenberg_old       1990s file: licence closed by "*END*THE SMALL PRINT!", accented letters in
                      ISO-8859-1, which its header declares
  gutenberg_no_end    start marker, footer cut off
  exact_duplicate     the `books3` book 5 files before inside a Gutenberg header and footer
  empty               Gutenberg header and footer around nothing
  books3_unicode      Books3-style text with accented letters and typographic quotes
  undecodable         Latin-1 bytes with no declared encoding
Every other book is new prose from its own seeded generator, so unrelated books share almost no
5-word shingles.
"""

from __future__ import annotations

import gzip
import random
import textwrap
from pathlib import Path

KINDS = ("gutenberg", "books3", "gutenberg_this", "near_duplicate", "gutenberg_old",
         "gutenberg_no_end", "exact_duplicate", "empty", "books3_unicode", "undecodable")
DROPPED = {"near_duplicate": "near_duplicate", "exact_duplicate": "near_duplicate",
           "empty": "empty"}
MALFORMED = {"undecodable": "undecodable_bytes"}
COPIED_FROM = {"near_duplicate": 3, "exact_duplicate": 5}  # how many files back the original is

WORDS = (
    "the of and to a in that was he it his her with as had for she on at but not be by which "
    "you they from all this said were there would one have or an so him their been if what when "
    "no into more could me out will then some up do about very my time now them who only little "
    "any like man upon over such great before old other day made good did how should well may "
    "house night eyes long hand must never first way down again father mother young face heard "
    "room door window came looked thought knew went away still without place through after "
    "nothing life light voice told felt another heart letter morning friend left better sea "
    "ship captain garden river road town church master lady child dark turned answered moment"
).split()
UNICODE_WORDS = "café naïve façade élan déjà señor fiancée rôle über Zürich".split()


def _sentence(rng: random.Random, words: tuple[str, ...] | list[str]) -> str:
  text = " ".join(rng.choices(words, k=rng.randint(6, 22)))
  if rng.random() < 0.2:
    text = f"\u201c{text.capitalize()},\u201d said the {rng.choice(words)}."
  return text[0].upper() + text[1:] + ("." if not text.endswith(".") else "")


def book_body(rng: random.Random, words: int, unicode: bool = False) -> str:
  """Chapters of wrapped paragraphs, about `words` words."""
  vocabulary = list(WORDS) + (UNICODE_WORDS if unicode else [])
  chapters, written, chapter = [], 0, 0
  while written < words:
    chapter += 1
    paragraphs = [f"CHAPTER {chapter}."]
    for _ in range(rng.randint(5, 15)):
      paragraph = " ".join(_sentence(rng, vocabulary) for _ in range(rng.randint(2, 8)))
      written += len(paragraph.split())
      paragraphs.append(textwrap.fill(paragraph, 70))
    chapters.append("\n\n".join(paragraphs))
  return "\n\n\n".join(chapters)


def _title(rng: random.Random) -> str:
  return f"The {rng.choice(WORDS).capitalize()} of the {rng.choice(WORDS).capitalize()}"


def gutenberg(body: str, title: str, number: int, this: bool = False, end: bool = True) -> str:
  """A modern Project Gutenberg file around `body`."""
  the = "THIS" if this else "THE"
  head = (f"The Project Gutenberg EBook of {title}, by Anonymous\n\n"
          "This eBook is for the use of anyone anywhere at no cost and with\n"
          "almost no restrictions whatsoever.\n\n"
          f"Title: {title}\n\nAuthor: Anonymous\n\n"
          f"Release Date: May 1, 2004 [EBook #{number}]\n\nLanguage: English\n\n"
          "Character set encoding: UTF-8\n\n"
          f"*** START OF {the} PROJECT GUTENBERG EBOOK {title.upper()} ***\n\n\n")
  if not end:
    return head + body + "\n"
  return (head + body + f"\n\n\nEnd of the Project Gutenberg EBook of {title}, by Anonymous\n\n"
          f"*** END OF {the} PROJECT GUTENBERG EBOOK {title.upper()} ***\n\n"
          "***** This file should be named " + f"{number}.txt or {number}.zip *****\n\n"
          "*** START: FULL LICENSE ***\n\nTHE FULL PROJECT GUTENBERG LICENSE\n"
          "PLEASE READ THIS BEFORE YOU DISTRIBUTE OR USE THIS WORK\n")


def gutenberg_old(body: str, title: str) -> str:
  """A 1990s Gutenberg file, whose licence ("the small print") ends before the text."""
  return (f"**The Project Gutenberg Etext of {title}**\n"
          "Character set encoding: ISO-8859-1\n\n"
          "*****These Etexts Are Prepared By Thousands of Volunteers!*****\n\n"
          f"Title: {title}\n\n"
          "**Welcome To The World of Free Plain Vanilla Electronic Texts**\n\n"
          "***START**THE SMALL PRINT!**FOR PUBLIC DOMAIN ETEXTS**START***\n"
          "Why is this \"Small Print!\" statement here?  You know: lawyers.\n"
          "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n\n"
          + body + f"\n\n\n*END OF THE PROJECT GUTENBERG ETEXT OF {title.upper()}*\n")


def _perturb(rng: random.Random, body: str, fraction: float) -> str:
  words = body.split(" ")
  for index in rng.sample(range(len(words)), max(1, int(len(words) * fraction))):
    words[index] = rng.choice(WORDS)
  return " ".join(words)


def write_sample_input(directory: Path, count: int, seed: int = 0,
                       words_per_book: int = 20000) -> str:
  """Writes `count` book files under `directory`; returns the glob that matches them.

  A book is about `words_per_book` words (a novel has 60k-100k; 20k keeps 300 books near 25 MB).
  """
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  bodies: dict[int, str] = {}
  for index in range(count):
    kind = KINDS[index % len(KINDS)]
    rng = random.Random(f"{seed}:{index}")
    body = book_body(rng, words_per_book, unicode=kind in ("books3_unicode", "gutenberg_old"))
    if kind in ("gutenberg_old", "undecodable"):  # Latin-1 has no typographic quotes
      body = body.replace("\u201c", '"').replace("\u201d", '"')
    title, number = _title(rng), 10000 + index
    if kind in COPIED_FROM and index - COPIED_FROM[kind] >= 0:
      body = bodies[index - COPIED_FROM[kind]]
      if kind == "near_duplicate":
        body = _perturb(rng, body, 0.002)
    bodies[index] = body
    name = directory / f"book-{index:05d}-{kind}.txt"
    if kind in ("books3", "books3_unicode", "near_duplicate"):
      data = body.encode("utf-8")
    elif kind == "gutenberg_this":
      data = gutenberg(body, title, number, this=True).replace("\n", "\r\n").encode("utf-8")
    elif kind == "gutenberg_old":
      data = gutenberg_old(body, title).encode("latin-1")
    elif kind == "gutenberg_no_end":
      data = gutenberg(body, title, number, end=False).encode("utf-8")
    elif kind == "empty":
      data = gutenberg("", title, number).encode("utf-8")
    elif kind == "undecodable":
      data = body.replace("the", "th\xe9").encode("latin-1")
    else:
      data = gutenberg(body, title, number).encode("utf-8")
    if kind in ("books3", "gutenberg_this"):
      name = name.with_suffix(".txt.gz")
      data = gzip.compress(data, mtime=0)
    name.write_bytes(data)
  return str(directory / "book-*.txt*")
