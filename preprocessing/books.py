"""`--source=books`: Project Gutenberg and Books3 books, one book per file, near-duplicates removed.

Input: plain-text files (`*.txt`, `*.txt.gz`), one book each. Each file becomes one Document whose
id is its path (so "smaller id" below means the path that sorts first).

1. Decoding: UTF-8 (a byte-order mark is dropped). Older Gutenberg files are ISO-8859-1 or
   Windows-1252 and say so in their header ("Character set encoding: ISO-8859-1"); such a file
   is decoded with the codec it declares. Anything else that is not UTF-8 is reported as
   malformed (`undecodable_bytes`) rather than guessed at: latin-1 decodes every byte string, so
   falling back to it blindly would turn any binary or mis-encoded file into a book of mojibake.
   A file that cannot be read (a broken gzip stream) is malformed `unreadable_file`.
2. Gutenberg licence removal (`strip_gutenberg`): the text kept is what lies between the last start
   marker and the first end marker after it. Start markers: "*** START OF THE PROJECT GUTENBERG
   EBOOK ..." / "*** START OF THIS PROJECT GUTENBERG EBOOK ..." (also "ETEXT", any number of
   asterisks and spacing) and, in texts from the 1990s, the line that closes the licence, "*END*THE
   SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*...". End markers: "*** END OF THE/THIS PROJECT GUTENBERG
   EBOOK ..." and the plain line "End of (the) Project Gutenberg('s) EBook/Etext of ..." or "End of
   Project Gutenberg's <title>" that often precedes it. The kinds found are kept in metadata
   (`gutenberg_start_marker`, `gutenberg_end_marker`); a file with a start but no end marker is kept
   to its end and counted (`books_gutenberg_without_end_marker`), one with an end but no start
   marker is kept from its beginning and counted (`books_gutenberg_without_start_marker`). Title,
   author and ebook number come from the header lines before the start. A file with no marker is a
   Books3-style book and is kept whole.
3. `empty`: a book with no non-blank text left is dropped.
4. `near_duplicate` (`NearDuplicateBooks`), the paper's "more than 90% content overlap": each
   book's MinHash signature (128 permutations, datasketch's fixed seed so signatures from
   different workers compare) over its 5-word shingles (words are runs of letters and digits,
   lower-cased, so line wrapping, punctuation and Gutenberg's _italics_ do not matter; a book of
   fewer than 5 words is one shingle). Signatures are cut into 16 bands of 8 rows; books sharing
   a band are candidates, and a candidate pair is a near-duplicate when the Jaccard similarity
   estimated from the two full signatures is above 0.9. Rule (deterministic, order-free): a
   book is dropped when it has a near-duplicate with a smaller id. For a chain A~B, B~C with A
   and C not alike, B and C are both dropped, although C's only near-duplicate, B, is dropped
   too: deciding C by whether B survives would need a sequential pass over the chain, and
   losing C costs little (it is more than 90% the same as B, which is close to A).

Why 16x8 bands and not datasketch's optimum for 0.9 (5 bands of 25 rows): candidates are checked
against the full signatures, so a false candidate costs a comparison, while a missed one keeps a
duplicate; 5x25 proposes only 31% of the pairs at Jaccard 0.9, 16x8 proposes 99.99% (and 61% of
the pairs at 0.7, which the check then rejects).

The deduplication scales past one machine: signatures are computed in a DoFn, (band, band hash)
keys are grouped with GroupByKey, and the ids to drop are joined back to the books by id with
CoGroupByKey, so no worker holds more than one bucket or one book at a time.
"""

from __future__ import annotations

import argparse
import codecs
import dataclasses
import hashlib
import re
import zlib
from collections.abc import Iterable

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from datasketch import MinHash

from preprocessing import pipeline as wiring
from preprocessing.decompress import DecompressionBomb, read_within
from preprocessing.document import Document, Drop
from preprocessing.pipeline import ApplyFilters, ReadFiles, count, report_malformed

SOURCE = "books"
SHINGLE_WORDS = 5
NUM_PERM = 128
LSH_BANDS = 16
THRESHOLD = 0.9
MINHASH_SEED = 1  # every worker must draw the same permutations for signatures to compare
HEADER_LINES = 400  # where a Gutenberg header declares its encoding, title and ebook number

_START = re.compile(r"^\s*\*+\s*START\s+OF\s+(?:THE|THIS)\s+PROJECT\s+GUTENBERG\s+E-?(?:BOOK|TEXT)",
                    re.IGNORECASE)
_SMALL_PRINT_END = re.compile(r"^\s*\*\s*END\s*\*?\s*THE\s+SMALL\s+PRINT", re.IGNORECASE)
_END = re.compile(r"^\s*\*+\s*END\s+OF\s+(?:THE|THIS)\s+PROJECT\s+GUTENBERG\s+E-?(?:BOOK|TEXT)",
                  re.IGNORECASE)
_END_LINE = re.compile(
    r"^\s*End\s+of\s+(?:the\s+)?Project\s+Gutenberg(?:'s\s|\s+E-?(?:Book|Text))", re.IGNORECASE)
_ENCODING = re.compile(rb"^\s*Character set encoding:\s*([A-Za-z0-9_.:-]+)", re.IGNORECASE)
_HEADER_FIELD = re.compile(r"^\s*(Title|Author):\s*(.+?)\s*$", re.IGNORECASE)
_EBOOK_NUMBER = re.compile(r"\[\s*E-?(?:Book|Text)\s*#\s*(\d+)\s*\]", re.IGNORECASE)
_WORD = re.compile(r"[^\W_]+")


def decode_book(data: bytes) -> tuple[str, str] | None:
  """(text, encoding) of a book file's bytes, or None when they are undecodable (module doc)."""
  try:
    return data.decode("utf-8-sig"), "utf-8"
  except UnicodeDecodeError:
    pass
  for line in data[:65536].splitlines()[:HEADER_LINES]:
    if match := _ENCODING.match(line):
      name = match.group(1).decode("ascii").rstrip(".")
      try:
        return data.decode(name), codecs.lookup(name).name
      except (LookupError, UnicodeDecodeError):
        return None
  return None


@dataclasses.dataclass
class Stripped:
  """What `strip_gutenberg` found: the body and the header's details."""

  text: str
  start_marker: str | None = None
  end_marker: str | None = None
  header: dict[str, str] = dataclasses.field(default_factory=dict)


def _header_fields(lines: list[str]) -> dict[str, str]:
  fields = {}
  for line in lines[:HEADER_LINES]:
    if match := _HEADER_FIELD.match(line):
      fields.setdefault(match.group(1).lower(), match.group(2))
    elif "gutenberg_ebook" not in fields and (match := _EBOOK_NUMBER.search(line)):
      fields["gutenberg_ebook"] = match.group(1)
  return fields


def strip_gutenberg(text: str) -> Stripped:
  """The text between Gutenberg's licence header and footer (module docstring, step 2).

  Books without a marker come back whole with both markers None.
  """
  lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
  start, start_kind = None, None
  end, end_kind = None, None
  for number, line in enumerate(lines):
    if _START.match(line):
      start, start_kind = number, "start_of_project_gutenberg"
    elif _SMALL_PRINT_END.match(line):
      start, start_kind = number, "end_of_small_print"
    elif _END.match(line) or _END_LINE.match(line):
      end = number
      end_kind = "end_of_project_gutenberg" if _END.match(line) else "end_of_project_gutenberg_line"
      break
  if start is None and end is None:
    return Stripped(text="\n".join(lines).strip())
  body = lines[(start + 1 if start is not None else 0):end]
  header = _header_fields(lines[:start]) if start is not None else {}
  return Stripped("\n".join(body).strip(), start_kind, end_kind, header)


def book_document(path: str, data: bytes) -> Document | None:
  """The Document of one book file, or None (reported malformed) when it is undecodable."""
  decoded = decode_book(data)
  if decoded is None:
    report_malformed("undecodable_bytes", path)
    return None
  text, encoding = decoded
  stripped = strip_gutenberg(text)
  metadata = {"path": path, "encoding": encoding}
  if stripped.start_marker is None and stripped.end_marker is None:
    metadata["format"] = "plain"
    count("books_plain")
  else:
    metadata.update(format="gutenberg", gutenberg_start_marker=stripped.start_marker,
                    gutenberg_end_marker=stripped.end_marker, **stripped.header)
    count("books_gutenberg")
    if stripped.end_marker is None:
      count("books_gutenberg_without_end_marker")
    if stripped.start_marker is None:
      count("books_gutenberg_without_start_marker")
  return Document(id=path, source=SOURCE, text=stripped.text, metadata=metadata)


def non_empty(doc: Document) -> Document | Drop:
  return doc if doc.text.strip() else Drop("empty")


def shingles(text: str, words: int = SHINGLE_WORDS) -> set[bytes]:
  """The `words`-word shingles of a text (module docstring, step 4)."""
  tokens = _WORD.findall(text.lower())
  if len(tokens) <= words:
    return {" ".join(tokens).encode("utf-8")}
  return {" ".join(tokens[i:i + words]).encode("utf-8") for i in range(len(tokens) - words + 1)}


def signature(text: str, num_perm: int = NUM_PERM, words: int = SHINGLE_WORDS) -> np.ndarray:
  """The MinHash signature of a text's shingles, the same on every worker."""
  minhash = MinHash(num_perm=num_perm, seed=MINHASH_SEED)
  minhash.update_batch(shingles(text, words))
  return minhash.hashvalues


def estimated_jaccard(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.mean(a == b))


def band_keys(sig: np.ndarray, bands: int) -> list[tuple[int, bytes]]:
  """(band index, 8-byte hash of the band's rows): books sharing a key are candidates."""
  rows = len(sig) // bands
  return [(band, hashlib.blake2b(sig[band * rows:(band + 1) * rows].tobytes(),
                                 digest_size=8).digest())
          for band in range(bands)]


def duplicates_in_bucket(members: Iterable[tuple[str, np.ndarray]],
                         threshold: float = THRESHOLD) -> Iterable[tuple[str, str]]:
  """(dropped id, smaller id it nearly duplicates) for each bucket member that has one.

  Members are (id, signature). Each member is compared with the smaller ids until the first
  near-duplicate, so a bucket of many copies of one book costs one comparison per copy.
  """
  members = sorted(members, key=lambda member: member[0])
  for j in range(1, len(members)):
    for i in range(j):
      if estimated_jaccard(members[i][1], members[j][1]) > threshold:
        yield members[j][0], members[i][0]
        break


class BandBuckets(beam.DoFn):
  """A book's MinHash signature, emitted once per LSH band under ((band, band hash), (id, sig))."""

  def __init__(self, num_perm: int, bands: int, words: int):
    self.num_perm, self.bands, self.words = num_perm, bands, words

  def process(self, doc: Document):
    sig = signature(doc.text, self.num_perm, self.words)
    for key in band_keys(sig, self.bands):
      yield key, (doc.id, sig)


def _drop_near_duplicates(id_and_groups):
  _, groups = id_and_groups
  if groups["duplicate_of"]:
    count("dropped/near_duplicate", len(groups["book"]))
    return
  yield from groups["book"]


class NearDuplicateBooks(beam.PTransform):
  """Drops every book that has a near-duplicate with a smaller id (module docstring, step 4)."""

  def __init__(self, num_perm: int = NUM_PERM, bands: int = LSH_BANDS,
               threshold: float = THRESHOLD, words: int = SHINGLE_WORDS):
    super().__init__()
    self.num_perm, self.bands, self.threshold, self.words = num_perm, bands, threshold, words

  def expand(self, books):
    duplicate_of = (books
                    | "Signatures" >> beam.ParDo(BandBuckets(self.num_perm, self.bands, self.words))
                    | "GroupBuckets" >> beam.GroupByKey()
                    | "Candidates" >> beam.FlatMap(
                        lambda bucket: duplicates_in_bucket(bucket[1], self.threshold)))
    by_id = books | "KeyById" >> beam.Map(lambda doc: (doc.id, doc))
    return ({"book": by_id, "duplicate_of": duplicate_of}
            | "JoinById" >> beam.CoGroupByKey()
            | "DropDuplicates" >> beam.FlatMap(_drop_near_duplicates))


def _read_book(readable: fileio.ReadableFile) -> Iterable[Document]:
  path = readable.metadata.path
  try:
    # A truncated .gz / .bz2 raises (pipeline.open_input), and no book decompresses past the
    # limits of preprocessing.decompress.
    with wiring.open_input(readable) as stream:
      data = read_within(stream, readable.metadata.size_in_bytes, path)
  except DecompressionBomb as error:
    report_malformed("decompression_bomb", str(error))
    return
  except (OSError, EOFError, ValueError, zlib.error) as error:
    report_malformed("unreadable_file", f"{path}: {error}")
    return
  if wiring.progress_bar is not None:  # set by pipeline.run_pipeline while the pipeline runs
    wiring.progress_bar.update(readable.metadata.size_in_bytes)
  doc = book_document(path, data)
  if doc is not None:
    count("documents_read")
    yield doc


def add_arguments(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group("books")
  group.add_argument("--books_threshold", type=float, default=THRESHOLD,
                     help="books: drop a book whose estimated Jaccard similarity to a book with a "
                          "smaller id is above this (the paper's 90%% content overlap)")
  group.add_argument("--books_num_perm", type=int, default=NUM_PERM,
                     help="books: MinHash permutations per signature")
  group.add_argument("--books_lsh_bands", type=int, default=LSH_BANDS,
                     help="books: LSH bands; must divide --books_num_perm")
  group.add_argument("--books_shingle_words", type=int, default=SHINGLE_WORDS,
                     help="books: words per shingle")


def check_arguments(args: argparse.Namespace) -> list[str]:
  problems = []
  if not 0 < args.books_threshold < 1:
    problems.append(f"--books_threshold={args.books_threshold}: give a value between 0 and 1")
  if args.books_num_perm < 1:
    problems.append(f"--books_num_perm={args.books_num_perm}: give a positive number")
  if args.books_lsh_bands < 1 or args.books_num_perm % max(args.books_lsh_bands, 1):
    problems.append(f"--books_lsh_bands={args.books_lsh_bands}: give a positive divisor of "
                    f"--books_num_perm={args.books_num_perm}")
  if args.books_shingle_words < 1:
    problems.append(f"--books_shingle_words={args.books_shingle_words}: give a positive number")
  return problems


def build(pipeline: beam.Pipeline, args: argparse.Namespace) -> beam.PCollection:
  return (pipeline
          | "ReadBooks" >> ReadFiles(args.input, _read_book)
          | "DropEmpty" >> beam.ParDo(ApplyFilters([non_empty]))
          | "NearDuplicates" >> NearDuplicateBooks(args.books_num_perm, args.books_lsh_bands,
                                                   args.books_threshold,
                                                   args.books_shingle_words))
