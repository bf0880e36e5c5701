"""`--source=books`: decoding, Gutenberg licence removal, MinHash near-duplicates, end to end."""

import argparse
import gzip
import random

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
from conftest import written_documents

from preprocessing import books, run
from preprocessing.document import Document, Drop
from preprocessing.testing import synthetic_books

BODY = "CHAPTER I.\n\nIt was a dark night, and the sea was loud.\nShe looked at the door."


def _prose(seed, words=600):
  return synthetic_books.book_body(random.Random(seed), words)


@pytest.mark.parametrize("data, expected", [
    ("A café.".encode(), ("A café.", "utf-8")),
    (b"\xef\xbb\xbfWith a byte-order mark.", ("With a byte-order mark.", "utf-8")),
    ("Title: X\nCharacter set encoding: ISO-8859-1\n\nA café.".encode("latin-1"),
     ("Title: X\nCharacter set encoding: ISO-8859-1\n\nA café.", "iso8859-1")),
    ("Character set encoding: Windows-1252\n\n\u201cQuoted\u201d".encode("cp1252"),
     ("Character set encoding: Windows-1252\n\n\u201cQuoted\u201d", "cp1252")),
])
def test_decode_book(data, expected):
  assert books.decode_book(data) == expected


@pytest.mark.parametrize("data", [
    "A café with no declared encoding.".encode("latin-1"),
    "Character set encoding: NO-SUCH-CODEC\n\nA café.".encode("latin-1"),
    "Character set encoding: UTF-8\n\nA café that is not UTF-8.".encode("latin-1"),
    b"\x00\xff\xfe binary junk \x81",
])
def test_decode_book_undecodable(data):
  assert books.decode_book(data) is None


def _gutenberg(start, end, footer="*** START: FULL LICENSE ***\nTHE FULL LICENSE\n"):
  return ("The Project Gutenberg EBook of Night, by A. Writer\n\nTitle: Night\n\n"
          "Author: A. Writer\n\nRelease Date: May 1, 2004 [EBook #4242]\n\n"
          f"{start}\n\n{BODY}\n\n{end}\n{footer}")


@pytest.mark.parametrize("start, end, start_kind, end_kind", [
    ("*** START OF THE PROJECT GUTENBERG EBOOK NIGHT ***",
     "*** END OF THE PROJECT GUTENBERG EBOOK NIGHT ***",
     "start_of_project_gutenberg", "end_of_project_gutenberg"),
    ("*** START OF THIS PROJECT GUTENBERG EBOOK NIGHT ***",
     "*** END OF THIS PROJECT GUTENBERG EBOOK NIGHT ***",
     "start_of_project_gutenberg", "end_of_project_gutenberg"),
    ("***START OF THE PROJECT GUTENBERG EBOOK NIGHT***",
     "***END OF THE PROJECT GUTENBERG EBOOK NIGHT***",
     "start_of_project_gutenberg", "end_of_project_gutenberg"),
    ("*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*",
     "*END OF THE PROJECT GUTENBERG ETEXT OF NIGHT*",
     "end_of_small_print", "end_of_project_gutenberg"),
    ("*** START OF THE PROJECT GUTENBERG EBOOK NIGHT ***",
     "End of the Project Gutenberg EBook of Night, by A. Writer\n\n*** END OF THE PROJECT "
     "GUTENBERG EBOOK NIGHT ***", "start_of_project_gutenberg", "end_of_project_gutenberg_line"),
    ("*** START OF THE PROJECT GUTENBERG EBOOK NIGHT ***",
     "End of Project Gutenberg's Night, by A. Writer",
     "start_of_project_gutenberg", "end_of_project_gutenberg_line"),
])
def test_strip_gutenberg_markers(start, end, start_kind, end_kind):
  stripped = books.strip_gutenberg(_gutenberg(start, end))
  assert stripped.text == BODY
  assert (stripped.start_marker, stripped.end_marker) == (start_kind, end_kind)
  assert stripped.header == {"title": "Night", "author": "A. Writer", "gutenberg_ebook": "4242"}


def test_strip_gutenberg_crlf_and_both_old_and_new_start_markers():
  text = ("*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*END*\nTranscriber's note.\n"
          "*** START OF THE PROJECT GUTENBERG EBOOK NIGHT ***\n" + BODY
          + "\n*** END OF THE PROJECT GUTENBERG EBOOK NIGHT ***\n")
  stripped = books.strip_gutenberg(text.replace("\n", "\r\n"))
  assert stripped.text == BODY  # the body starts after the last start marker
  assert stripped.start_marker == "start_of_project_gutenberg"


def test_strip_gutenberg_missing_markers():
  no_end = books.strip_gutenberg("Title: Night\n*** START OF THE PROJECT GUTENBERG EBOOK NIGHT ***"
                                 f"\n{BODY}\n")
  assert (no_end.text, no_end.end_marker) == (BODY, None)
  no_start = books.strip_gutenberg(f"{BODY}\n*** END OF THE PROJECT GUTENBERG EBOOK NIGHT ***\nX")
  assert (no_start.text, no_start.start_marker, no_start.header) == (BODY, None, {})
  plain = books.strip_gutenberg(f"\n{BODY}\n\nThe Project Gutenberg is mentioned in passing.\n")
  assert plain == books.Stripped(f"{BODY}\n\nThe Project Gutenberg is mentioned in passing.")


def test_book_document_metadata():
  data = _gutenberg("*** START OF THE PROJECT GUTENBERG EBOOK NIGHT ***",
                    "*** END OF THE PROJECT GUTENBERG EBOOK NIGHT ***").encode()
  doc = books.book_document("/in/night.txt", data)
  assert (doc.id, doc.source, doc.text) == ("/in/night.txt", "books", BODY)
  assert doc.metadata == {"path": "/in/night.txt", "encoding": "utf-8", "format": "gutenberg",
                          "gutenberg_start_marker": "start_of_project_gutenberg",
                          "gutenberg_end_marker": "end_of_project_gutenberg", "title": "Night",
                          "author": "A. Writer", "gutenberg_ebook": "4242"}
  plain = books.book_document("/in/plain.txt", BODY.encode())
  assert plain.metadata == {"path": "/in/plain.txt", "encoding": "utf-8", "format": "plain"}
  assert books.book_document("/in/bad.txt", "caf\xe9".encode("latin-1")) is None


def test_non_empty():
  assert books.non_empty(Document("a", "books", BODY)).text == BODY
  assert books.non_empty(Document("a", "books", " \n\t\n")) == Drop("empty")


def test_shingles():
  # Case, punctuation, line wrapping and Gutenberg's _italics_ do not change a shingle.
  assert books.shingles("One two, three\nfour _five_ six.") == {
      b"one two three four five", b"two three four five six"}
  assert books.shingles("Too short.") == {b"too short"}
  assert books.shingles("a b c a b", words=2) == {b"a b", b"b c", b"c a"}


def test_signature_and_jaccard():
  text = _prose(1)
  words = text.split(" ")
  words[len(words) // 2] = "zebra"
  edited = " ".join(words)
  assert np.array_equal(books.signature(text), books.signature(text))
  assert books.signature(text).shape == (books.NUM_PERM,)
  assert books.estimated_jaccard(books.signature(text), books.signature(text)) == 1.0
  assert books.estimated_jaccard(books.signature(text), books.signature(edited)) > books.THRESHOLD
  assert books.estimated_jaccard(books.signature(text), books.signature(_prose(2))) < 0.1
  # Half the book shared is 1/3 Jaccard: well below the paper's 90% overlap.
  half = "\n\n".join(text.split("\n\n")[: len(text.split("\n\n")) // 2] + [_prose(3, 300)])
  assert books.estimated_jaccard(books.signature(text), books.signature(half)) < books.THRESHOLD


def test_band_keys():
  sig = books.signature(_prose(1))
  keys = books.band_keys(sig, books.LSH_BANDS)
  assert [band for band, _ in keys] == list(range(books.LSH_BANDS))
  assert keys == books.band_keys(sig.copy(), books.LSH_BANDS)
  changed = sig.copy()
  changed[0] += 1  # one row differs: only the first band's key changes
  assert [a == b for a, b in zip(keys, books.band_keys(changed, books.LSH_BANDS), strict=True)] == (
      [False] + [True] * (books.LSH_BANDS - 1))


def test_duplicates_in_bucket_chain_and_order():
  a = np.arange(128)
  b = a.copy()
  b[:10] += 1000  # A~B: 118/128 agree
  c = b.copy()
  c[10:20] += 1000  # B~C: 118/128; A and C agree on 108/128, below 0.9
  members = [("c", c), ("a", a), ("b", b)]
  expected = [("b", "a"), ("c", "b")]
  assert list(books.duplicates_in_bucket(members)) == expected
  assert list(books.duplicates_in_bucket(reversed(members))) == expected
  assert list(books.duplicates_in_bucket(members, threshold=0.95)) == []
  copies = [(f"copy{i}", a) for i in range(5)]
  assert list(books.duplicates_in_bucket(copies)) == [(f"copy{i}", "copy0") for i in range(1, 5)]
  assert list(books.duplicates_in_bucket([("a", a)])) == []


def test_check_arguments():
  def args(**changes):
    values = {"books_threshold": 0.9, "books_num_perm": 128, "books_lsh_bands": 16,
              "books_shingle_words": 5, **changes}
    return argparse.Namespace(**values)
  assert books.check_arguments(args()) == []
  assert books.check_arguments(args(books_threshold=1.5))[0].startswith("--books_threshold")
  assert books.check_arguments(args(books_lsh_bands=7))[0].startswith("--books_lsh_bands")
  assert books.check_arguments(args(books_lsh_bands=0))[0].startswith("--books_lsh_bands")
  assert books.check_arguments(args(books_shingle_words=0))[0].startswith("--books_shingle")


def test_sample_input_is_seeded(tmp_path):
  synthetic_books.write_sample_input(tmp_path / "a", 10, seed=3, words_per_book=200)
  synthetic_books.write_sample_input(tmp_path / "b", 10, seed=3, words_per_book=200)
  synthetic_books.write_sample_input(tmp_path / "c", 10, seed=4, words_per_book=200)
  names = sorted(p.name for p in (tmp_path / "a").iterdir())
  assert len(names) == 10
  assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "b" / n).read_bytes() for n in names)
  assert (tmp_path / "a" / names[0]).read_bytes() != (tmp_path / "c" / names[0]).read_bytes()


def test_books_end_to_end(tmp_path):
  pattern = synthetic_books.write_sample_input(tmp_path / "in", 12, seed=0, words_per_book=400)
  compressed = gzip.compress(_prose(7, 2000).encode())
  (tmp_path / "in" / "book-00100-truncated.txt.gz").write_bytes(compressed[:len(compressed) // 2])
  (tmp_path / "in" / "book-00101-not_gzip.txt.gz").write_bytes(_prose(8).encode())
  stats = run.main(["--source=books", f"--input={pattern}", f"--output={tmp_path / 'out'}"])

  written = written_documents(tmp_path / "out", lambda doc: doc.id.rsplit("/", 1)[1])
  assert sorted(written) == [
      "book-00000-gutenberg.txt", "book-00001-books3.txt.gz", "book-00002-gutenberg_this.txt.gz",
      "book-00004-gutenberg_old.txt", "book-00005-gutenberg_no_end.txt",
      "book-00008-books3_unicode.txt", "book-00010-gutenberg.txt", "book-00011-books3.txt.gz"]
  assert stats["documents_read"] == 11
  assert stats["documents_written"] == 8
  assert stats["dropped"] == {"empty": 1, "near_duplicate": 2}
  assert stats["malformed"] == {"undecodable_bytes": 1, "unreadable_file": 2}
  assert (stats["books_gutenberg"], stats["books_plain"]) == (7, 4)
  assert stats["books_gutenberg_without_end_marker"] == 1

  old = written["book-00004-gutenberg_old.txt"]
  assert old.metadata["encoding"] == "iso8859-1"
  assert old.metadata["gutenberg_start_marker"] == "end_of_small_print"
  assert any(word in old.text for word in synthetic_books.UNICODE_WORDS)
  for doc in written.values():
    assert "PROJECT GUTENBERG" not in doc.text.upper()
    assert "SMALL PRINT" not in doc.text
    assert "\r" not in doc.text
    assert doc.text.startswith("CHAPTER 1.")
  assert written["book-00000-gutenberg.txt"].metadata["title"].startswith("The ")


def _replace_words(text, positions):
  words = text.split(" ")
  for position in positions:
    words[position] = "zebra"
  return " ".join(words)


def test_near_duplicate_books_transform_chain():
  """A~B and B~C but not A~C: B and C are dropped (a near-duplicate with a smaller id each)."""
  a = _prose(11, 3000)
  length = len(a.split(" "))
  b = _replace_words(a, range(0, length // 2, 60))
  c = _replace_words(b, range(length // 2, length, 60))
  signatures = {name: books.signature(text) for name, text in {"a": a, "b": b, "c": c}.items()}
  jaccard = books.estimated_jaccard
  assert jaccard(signatures["a"], signatures["b"]) > books.THRESHOLD
  assert jaccard(signatures["b"], signatures["c"]) > books.THRESHOLD
  assert jaccard(signatures["a"], signatures["c"]) <= books.THRESHOLD
  docs = [Document(name, "books", text) for name, text in
          {"c": c, "b": b, "a": a, "other": _prose(12, 3000), "a-copy": a}.items()]
  with test_pipeline.TestPipeline() as pipeline:
    kept = (pipeline | beam.Create(docs) | books.NearDuplicateBooks()
            | beam.Map(lambda doc: doc.id))
    assert_that(kept, equal_to(["a", "other"]))
