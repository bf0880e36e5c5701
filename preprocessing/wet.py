"""CommonCrawl WET files: WARC/1.0 `conversion` records holding the plain text of one page each.

Parsing uses warcio. Damage is reported, never fatal: a record whose payload is shorter than its
Content-Length (a truncated download), text that is not UTF-8, an empty or unreadable file each
yield a `Malformed` with a reason, and reading goes on where it can.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed

from preprocessing.document import Document


class Malformed(NamedTuple):
  reason: str
  where: str


def read_wet(stream: BinaryIO, name: str, source: str = "ccnet") -> Iterator[Document | Malformed]:
  """Documents of the conversion records in one WET file (gzip or plain); `name` goes in errors."""
  records = 0
  try:
    for record in ArchiveIterator(stream):
      records += 1
      headers = record.rec_headers
      record_id = headers.get_header("WARC-Record-ID") or f"{name}#{records}"
      where = f"{name} record {records} {record_id}"
      if record.format != "warc":  # warcio also reads ARC, and takes free text for ARC headers
        yield Malformed("not_a_warc_record", where)
        continue
      if record.rec_type != "conversion":
        continue  # warcinfo and other record kinds carry no page text
      payload = record.content_stream().read()
      expected = int(headers.get_header("Content-Length") or len(payload))
      if len(payload) < expected:
        yield Malformed("truncated_record", where)
        continue
      try:
        text = payload.decode("utf-8")
      except UnicodeDecodeError:
        yield Malformed("invalid_utf8", where)
        continue
      yield Document(
          id=record_id.strip("<>"), source=source, text=text,
          metadata={"url": headers.get_header("WARC-Target-URI"),
                    "date": headers.get_header("WARC-Date"), "wet_file": name})
  except (ArchiveLoadFailed, EOFError, zlib.error, OSError, ValueError) as error:
    yield Malformed("unreadable_record", f"{name} after record {records}: {error}")
    return
  if records == 0:
    yield Malformed("empty_file", name)
