"""CommonCrawl WET files: WARC/1.0 `conversion` records holding the plain text of one page each.

Writing (`wet_bytes`) follows the WARC/1.0 layout byte by byte, independently of warcio, for
test and benchmark inputs.

Parsing uses warcio. Damage is reported, never fatal: a record whose payload is shorter than its
Content-Length (a truncated download), a compressed file that ends early (`truncated_file`, from
the stream that pipeline.open_input gives), text that is not UTF-8, an empty or unreadable file
each yield a `Malformed` with a reason, and reading goes on where it can.
"""

from __future__ import annotations

import gzip
import uuid
import zlib
from collections.abc import Iterator, Sequence
from typing import BinaryIO, NamedTuple

from warcio.archiveiterator import ArchiveIterator
from warcio.exceptions import ArchiveLoadFailed

from preprocessing.decompress import DAMAGE, LIMITS, damage_reason
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
      declared = int(headers.get_header("Content-Length") or 0)
      if declared > LIMITS.max_member_bytes:  # not held; warcio reads past it in chunks
        yield Malformed("decompression_bomb", where)
        continue
      payload = record.content_stream().read()
      expected = declared or len(payload)
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
  except DAMAGE as error:  # the records before the cut or the bomb are kept
    yield Malformed(damage_reason(error), f"{name} after record {records}: {error}")
    return
  except (ArchiveLoadFailed, zlib.error, OSError, ValueError) as error:
    yield Malformed("unreadable_record", f"{name} after record {records}: {error}")
    return
  if records == 0:
    yield Malformed("empty_file", name)


def _warc_record(headers: dict[str, str], body: bytes) -> bytes:
  head = "\r\n".join(["WARC/1.0", *(f"{k}: {v}" for k, v in headers.items()),
                      f"Content-Length: {len(body)}"])
  return head.encode() + b"\r\n\r\n" + body + b"\r\n\r\n"


def wet_bytes(pages: Sequence[tuple[str, str | bytes]], compress: bool = True) -> bytes:
  """A WET file of (url, text) pages: a warcinfo record, then one conversion record per page.

  Record ids are UUIDs derived from the URL, unique across files as CommonCrawl's are.

  Compressed as CommonCrawl ships WET: each record its own gzip member.
  """
  records = [_warc_record(
      {"WARC-Type": "warcinfo", "WARC-Date": "2019-08-17T22:40:17Z",
       "WARC-Filename": "CC-MAIN-20190817203056-20190817225056-00000.warc.wet.gz",
       "WARC-Record-ID": f"<urn:uuid:{uuid.UUID(int=0)}>",
       "Content-Type": "application/warc-fields"},
      b"Software-Info: ia-web-commons.1.1.9-SNAPSHOT-20190814040449\r\n")]
  for url, text in pages:
    records.append(_warc_record(
        {"WARC-Type": "conversion", "WARC-Target-URI": url, "WARC-Date": "2019-08-17T21:00:00Z",
         "WARC-Record-ID": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>",
         "WARC-Refers-To": f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'warc:' + url)}>",
         "Content-Type": "text/plain"},
        text.encode("utf-8") if isinstance(text, str) else text))
  if compress:
    return b"".join(gzip.compress(r, compresslevel=1) for r in records)
  return b"".join(records)
