"""`--source=c4`: C4 as its released code built it (tensorflow_datasets c4_utils.py), or a copy.

From WET files: every page goes through C4's line rules (terminal punctuation, at least 5 words,
no word over 1000 characters, no "javascript", no policy or cookie boilerplate; citation marks
removed), then its page rules ("lorem ipsum" or "{" drop the page, at least 3 sentences must
remain), then lines are deduplicated across the corpus (one copy of each line kept), then pages
with a bad word (LDNOOBW list) or not English by langdetect (probability >= 0.99) are dropped.
C4's released code uses 5 words per line and 3 sentences per page (the T5 paper's prose says 3
and 5); the code is what built C4.

Sentences are counted with a regular expression (terminal punctuation followed by space or end),
not nltk's punkt as C4 does: close on prose, and no model download.

An existing C4 copy (the released JSON files, one {"text", "url", "timestamp"} object per line)
is read as it is with --c4_input_format=c4_json.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import apache_beam as beam

from preprocessing.document import Document, Drop
from preprocessing.pipeline import ApplyFilters, DeduplicateLines, ReadJsonl, ReadWet

DEFAULT_BAD_WORDS = Path(__file__).parent / "data" / "ldnoobw_en.txt"

MIN_WORDS_PER_LINE = 5
MIN_SENTENCES_PER_PAGE = 3
MAX_WORD_LENGTH = 1000
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies",
                  "use of cookies", "use cookies")
_CITATION = re.compile(r"\[\d+\]|\[edit\]|\[citation needed\]", re.IGNORECASE)
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
LANGUAGE_THRESHOLD = 0.99


def line_rule(line: str) -> str | None:
  """The first C4 line rule the (stripped, citation-free) line breaks, or None to keep it."""
  if not line.endswith((".", "?", "!", '"')) or line.endswith("..."):
    return "no_terminal_punctuation"
  words = line.split()
  if len(words) < MIN_WORDS_PER_LINE:
    return "too_few_words"
  if any(len(word) > MAX_WORD_LENGTH for word in words):
    return "word_too_long"
  lowered = line.lower()
  if "javascript" in lowered:
    return "javascript"
  if any(phrase in lowered for phrase in POLICY_PHRASES):
    return "policy"
  return None


def count_sentences(text: str) -> int:
  return len(_SENTENCE_END.findall(text))


def clean_lines(doc: Document) -> Document | Drop:
  """C4's line rules; how many lines each rule removed goes to metadata['c4_lines_removed']."""
  kept, removed = [], Counter()
  for raw in doc.text.split("\n"):
    line = _CITATION.sub("", raw).strip()
    if not line:
      continue
    if reason := line_rule(line):
      removed[reason] += 1
    else:
      kept.append(line)
  doc.metadata["c4_lines_removed"] = dict(removed)
  if not kept:
    return Drop("no_lines_left")
  doc.text = "\n".join(kept)
  return doc


def page_rules(doc: Document) -> Document | Drop:
  lowered = doc.text.lower()
  if "lorem ipsum" in lowered:
    return Drop("lorem_ipsum")
  if "{" in doc.text:
    return Drop("curly_brace")
  return min_sentences(doc)


def min_sentences(doc: Document) -> Document | Drop:
  return doc if count_sentences(doc.text) >= MIN_SENTENCES_PER_PAGE else Drop("too_few_sentences")


class BadWords:
  """C4's bad-words test: an entry found in the lower-cased page between non-word characters.

  C4 searches one alternation of all entries; here an entry is only tried when its first word
  occurs in the page, which finds the same pages much faster.
  """

  def __init__(self, entries: Iterable[str]):
    self.by_first_word: dict[str, list[str]] = defaultdict(list)
    self.without_words: list[str] = []  # entries such as an emoji: always tried
    for entry in entries:
      words = re.findall(r"\w+", entry)
      if words:
        self.by_first_word[words[0]].append(entry)
      else:
        self.without_words.append(entry)

  def __len__(self) -> int:
    return sum(map(len, self.by_first_word.values())) + len(self.without_words)

  def found_in(self, text: str) -> bool:
    lowered = text.lower()
    candidates = [e for word in set(re.findall(r"\w+", lowered))
                  for e in self.by_first_word.get(word, ())] + self.without_words
    return any(re.search(rf"(?:\W|^){re.escape(e)}(?:\W|$)", lowered) for e in candidates)


def load_bad_words(path: str | Path) -> BadWords:
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"bad-words list {path} not found (--bad_words); one word or "
                            "phrase per line, e.g. LDNOOBW's English list")
  return BadWords({w.strip().lower() for w in path.read_text(encoding="utf-8").splitlines()
                   if w.strip()})


def bad_words_filter(doc: Document, bad_words: BadWords) -> Document | Drop:
  return Drop("bad_words") if bad_words.found_in(doc.text) else doc


def english_filter(doc: Document, threshold: float = LANGUAGE_THRESHOLD) -> Document | Drop:
  """langdetect as C4: keep English detected with probability >= threshold."""
  from langdetect import DetectorFactory, detect_langs
  from langdetect.lang_detect_exception import LangDetectException

  DetectorFactory.seed = 0  # langdetect samples; a fixed seed makes it repeatable
  try:
    best = detect_langs(doc.text)[0]
  except LangDetectException:
    return Drop("language_undetected")
  doc.metadata["language"], doc.metadata["language_score"] = best.lang, round(best.prob, 4)
  if best.lang != "en":
    return Drop(f"language_{best.lang}")
  return doc if best.prob >= threshold else Drop("language_low_confidence")


def line_dedup_key(line: str) -> str:
  """C4's cross-corpus line key: MD5 of the stripped, lower-cased line."""
  return hashlib.md5(line.strip().lower().encode("utf-8")).hexdigest()


def c4_json_document(line: str, where: str) -> Document:
  """A Document from a line of the released C4 JSON files ({"text", "url", "timestamp"})."""
  try:
    record = json.loads(line)
    text, url = record["text"], record["url"]
  except (json.JSONDecodeError, KeyError, TypeError) as error:
    raise ValueError(f"{where}: not a C4 record ({error!r})") from None
  return Document(id=url, source="c4", text=text,
                  metadata={"url": url, "timestamp": record.get("timestamp")})


def add_arguments(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group("c4")
  group.add_argument("--c4_input_format", choices=("wet", "c4_json"), default="wet",
                     help="build C4 from WET files, or read the released C4 JSON files")
  group.add_argument("--bad_words", default=str(DEFAULT_BAD_WORDS),
                     help="bad-words list, one entry per line (default: LDNOOBW English)")


def check_arguments(args: argparse.Namespace) -> list[str]:
  if args.c4_input_format == "wet" and not Path(args.bad_words).is_file():
    return [f"--bad_words={args.bad_words}: file not found"]
  return []


def build(pipeline: beam.Pipeline, args: argparse.Namespace) -> beam.PCollection:
  if args.c4_input_format == "c4_json":
    return pipeline | "ReadC4" >> ReadJsonl(args.input, "c4", c4_json_document)
  bad_words = load_bad_words(args.bad_words)
  return (pipeline
          | "ReadWet" >> ReadWet(args.input, source="c4")
          | "CleanPages" >> beam.ParDo(ApplyFilters([clean_lines, page_rules]))
          | "DedupLines" >> DeduplicateLines(line_dedup_key, keep_first=True, reason="duplicate")
          | "PageFilters" >> beam.ParDo(ApplyFilters([
              min_sentences, functools.partial(bad_words_filter, bad_words=bad_words),
              english_filter])))
