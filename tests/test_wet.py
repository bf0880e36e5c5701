"""WET parsing: documents from conversion records; damaged input counted, not fatal."""

import io
import uuid

from preprocessing.wet import Malformed, read_wet, wet_bytes

PAGES = [("http://a.example/", "First page.\nSecond line."), ("http://b.example/", "Zweite Seite.")]


def _read(data: bytes):
  return list(read_wet(io.BytesIO(data), "test.warc.wet.gz"))


def test_conversion_records_become_documents():
  for compress in (True, False):
    docs = _read(wet_bytes(PAGES, compress=compress))
    assert [d.text for d in docs] == [text for _, text in PAGES]
    assert docs[0].metadata["url"] == "http://a.example/"
    assert docs[0].metadata["date"] == "2019-08-17T21:00:00Z"
    assert docs[0].id == f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'http://a.example/')}"
    assert {d.source for d in docs} == {"ccnet"}


def test_truncated_record_is_reported():
  items = _read(wet_bytes(PAGES, compress=False)[:-20])
  assert [type(i).__name__ for i in items] == ["Document", "Malformed"]
  assert items[1].reason == "truncated_record"


def test_invalid_utf8_is_reported_and_reading_goes_on():
  items = _read(wet_bytes([("http://a.example/", b"caf\xe9 latin-1"), *PAGES]))
  assert isinstance(items[0], Malformed) and items[0].reason == "invalid_utf8"
  assert [i.text for i in items[1:]] == [text for _, text in PAGES]


def test_empty_and_garbage_files_are_reported():
  assert _read(b"") == [Malformed("empty_file", "test.warc.wet.gz")]
  (item,) = _read(b"this is not a WARC file\n")
  assert item.reason in ("not_a_warc_record", "unreadable_record")
