"""`--source=c4`: C4 as its released code built it (tensorflow_datasets `text/c4_utils.py`).

Per page, in the order of C4's `clean_page`, each line is stripped and then
  1. removed if a word is longer than 1000 characters             (`word_too_long`)
  2. cleaned of citation marks `[1]`, `[]`, `[edit]`, `[citation needed]`
  3. removed unless it ends in . ? ! or ", or if it ends in "..."   (`no_terminal_punctuation`)
  4. removed if it has fewer than 5 words                          (`too_few_words`)
  5. the page is dropped if the line contains "lorem ipsum"         (Drop `lorem_ipsum`)
  6. removed if it contains "javascript"                           (`javascript`)
  7. the page is dropped if the line contains "{"                   (Drop `curly_brace`)
  8. removed if it contains a policy phrase ("terms of use", ...)   (`policy`)
The page rules of steps 5 and 7 see only lines that survived steps 1-4 (and 6 for "{"), as in C4:
a "{" in a menu line without terminal punctuation does not drop the page. Lines removed by each
rule are counted in metadata['c4_lines_removed'] (rules that removed nothing are left out; blank
lines are not counted, they hold no text). Then the page needs at least 3 sentences
(`too_few_sentences`). The pipeline then deduplicates lines across the corpus (`line_dedup_key`)
and checks the 3 sentences again, drops pages with a word of the bad-words list (`bad_words`), and
keeps English by langdetect with probability >= 0.99 (`language_<lang>`,
`language_low_confidence`, `language_undetected`). `clean_page` applies all of this to one page,
without the cross-corpus deduplication.

Like C4, citation marks and "{" are matched case-sensitively, the other phrases ignore case, and a
citation mark is removed without stripping the line again (so "Text. [1]" ends in a space and is
removed). C4's released code uses 5 words per line and 3 sentences per page; the T5 paper's prose
swaps the two numbers; the code is what built C4.

Departure from C4: sentences are counted with a regular expression (a sentence ends at . ! or ?,
optionally followed by closing quotes or brackets, then whitespace; every non-empty line holds at
least one sentence), not with nltk's punkt tokenizer: no model download, and the same count on
ordinary prose; it splits after abbreviations such as "Mr." where punkt does not.

An existing C4 copy (the released JSON files, one {"text", "url", "timestamp"} object per line)
is read as it is with --c4_input_format=c4_json.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import re
import threading
from collections import Counter
from pathlib import Path

import apache_beam as beam

from preprocessing.document import Document, Drop
from preprocessing.pipeline import ApplyFilters, DeduplicateLines, read_jsonl_files, read_wet_files

DEFAULT_BAD_WORDS = Path(__file__).parent / "data" / "ldnoobw_en.txt"

MIN_WORDS_PER_LINE = 5
MIN_SENTENCES_PER_PAGE = 3
MAX_WORD_LENGTH = 1000
TERMINAL_PUNCTUATION = (".", "?", "!", '"')
ELLIPSIS = "..."
POLICY_PHRASES = ("terms of use", "privacy policy", "cookie policy", "uses cookies",
                  "use of cookies", "use cookies")
LANGUAGE_THRESHOLD = 0.99

_CITATION = re.compile(r"\[\d*\]|\[edit\]|\[citation needed\]")
_SENTENCE_BREAK = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*\s+")
# langdetect loads its profiles lazily into a module global on first use, which is not
# thread-safe (C4 takes a lock for the same reason); Beam may run this in several threads.
_LANGDETECT_LOCK = threading.Lock()


def remove_citations(line: str) -> str:
  return _CITATION.sub("", line)


def has_too_long_word(line: str) -> bool:
  return any(len(word) > MAX_WORD_LENGTH for word in line.split())


def lacks_terminal_punctuation(line: str) -> bool:
  return not line.endswith(TERMINAL_PUNCTUATION) or line.endswith(ELLIPSIS)


def has_too_few_words(line: str) -> bool:
  return len(line.split()) < MIN_WORDS_PER_LINE


def mentions_javascript(line: str) -> bool:
  return "javascript" in line.lower()


def has_policy_phrase(line: str) -> bool:
  lowered = line.lower()
  return any(phrase in lowered for phrase in POLICY_PHRASES)


def has_lorem_ipsum(text: str) -> bool:
  return "lorem ipsum" in text.lower()


def has_curly_brace(text: str) -> bool:
  return "{" in text


def count_sentences(text: str) -> int:
  """Sentences per line, summed (C4 counts each kept line on its own); see the module docstring."""
  return sum(len([s for s in _SENTENCE_BREAK.split(line) if s.strip()])
             for line in text.splitlines())


def clean_lines(doc: Document) -> Document | Drop:
  """C4's line rules and the two page rules among them, in C4's order (module docstring)."""
  kept, removed = [], Counter()
  for raw in doc.text.splitlines():
    line = raw.strip()
    if not line:
      continue
    if has_too_long_word(line):
      removed["word_too_long"] += 1
      continue
    line = remove_citations(line)
    if lacks_terminal_punctuation(line):
      removed["no_terminal_punctuation"] += 1
    elif has_too_few_words(line):
      removed["too_few_words"] += 1
    elif has_lorem_ipsum(line):
      return Drop("lorem_ipsum")
    elif mentions_javascript(line):
      removed["javascript"] += 1
    elif has_curly_brace(line):
      return Drop("curly_brace")
    elif has_policy_phrase(line):
      removed["policy"] += 1
    else:
      kept.append(line)
  return dataclasses.replace(doc, text="\n".join(kept).strip(),
                             metadata={**doc.metadata, "c4_lines_removed": dict(removed)})


def min_sentences(doc: Document) -> Document | Drop:
  return doc if count_sentences(doc.text) >= MIN_SENTENCES_PER_PAGE else Drop("too_few_sentences")


def load_bad_words(path: str | Path) -> frozenset[str]:
  """One word or phrase per line (e.g. LDNOOBW's English list), lower-cased."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"bad-words list {path} not found (--bad_words); one word or "
                            "phrase per line, e.g. LDNOOBW's English list")
  words = frozenset(w.strip().lower() for w in path.read_text(encoding="utf-8").splitlines()
                    if w.strip())
  if not words:
    raise ValueError(f"bad-words list {path} is empty (--bad_words)")
  return words


@functools.lru_cache(maxsize=4)
def _bad_words_regex(bad_words: frozenset[str]) -> re.Pattern | None:
  if not bad_words:
    return None
  # As C4: a listed entry flanked by non-word characters or the ends of the text; the spaces
  # inside a phrase are matched literally.
  alternatives = "|".join(re.escape(w.lower()) for w in sorted(bad_words))
  return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")


def has_bad_word(text: str, bad_words: frozenset[str]) -> bool:
  """Whether a listed word or phrase occurs in `text` as whole words, ignoring case."""
  regex = _bad_words_regex(frozenset(bad_words))
  return regex is not None and regex.search(text.lower()) is not None


def bad_words_filter(doc: Document, bad_words: frozenset[str]) -> Document | Drop:
  return Drop("bad_words") if has_bad_word(doc.text, bad_words) else doc


def english_filter(doc: Document, threshold: float = LANGUAGE_THRESHOLD) -> Document | Drop:
  """langdetect as C4: keep English detected with probability >= threshold."""
  from langdetect import DetectorFactory, detect_langs
  from langdetect.lang_detect_exception import LangDetectException

  with _LANGDETECT_LOCK:
    DetectorFactory.seed = 0  # langdetect samples features at random; a fixed seed repeats
    try:
      best = detect_langs(doc.text)[0]
    except LangDetectException:
      return Drop("language_undetected")
  if best.lang != "en":
    return Drop(f"language_{best.lang}")
  if best.prob < threshold:
    return Drop("language_low_confidence")
  return dataclasses.replace(doc, metadata={**doc.metadata, "language": best.lang,
                                            "language_score": best.prob})


def clean_page(doc: Document, bad_words: frozenset[str]) -> Document | Drop:
  """Every C4 rule on one page, in C4's order, except the cross-corpus line deduplication."""
  for rule in (clean_lines, min_sentences, functools.partial(bad_words_filter, bad_words=bad_words),
               english_filter):
    doc = rule(doc)
    if isinstance(doc, Drop):
      return doc
  return doc


def line_dedup_key(line: str) -> str:
  """C4's cross-corpus line key: MD5 hex digest of the stripped, lower-cased line."""
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
    return pipeline | "ReadC4" >> read_jsonl_files(args.input, c4_json_document)
  bad_words = load_bad_words(args.bad_words)
  return (pipeline
          | "ReadWet" >> read_wet_files(args.input, source="c4")
          | "CleanPages" >> beam.ParDo(ApplyFilters([clean_lines, min_sentences]))
          | "DedupLines" >> DeduplicateLines(line_dedup_key, keep_first=True, reason="duplicate")
          | "PageFilters" >> beam.ParDo(ApplyFilters([
              min_sentences, functools.partial(bad_words_filter, bad_words=bad_words),
              english_filter])))
