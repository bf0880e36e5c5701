"""Writes CommonCrawl WET files byte by byte from the WARC/1.0 layout, independently of warcio."""

import gzip
import uuid
from pathlib import Path


def _record(headers: dict[str, str], body: bytes) -> bytes:
  lines = ["WARC/1.0", *(f"{k}: {v}" for k, v in headers.items()),
           f"Content-Length: {len(body)}"]
  return ("\r\n".join(lines) + "\r\n\r\n").encode() + body + b"\r\n\r\n"


def wet_records(pages: list[tuple[str, str]]) -> list[bytes]:
  """A warcinfo record then one conversion record per (url, text) page."""
  info = _record({"WARC-Type": "warcinfo", "WARC-Date": "2019-08-17T22:40:17Z",
                  "WARC-Filename": "CC-MAIN-20190817203056-20190817225056-00000.warc.wet.gz",
                  "WARC-Record-ID": f"<urn:uuid:{uuid.UUID(int=0)}>",
                  "Content-Type": "application/warc-fields"},
                 b"Software-Info: ia-web-commons.1.1.9-SNAPSHOT-20190814040449\r\n"
                 b"Extracted-Date: Sat, 17 Aug 2019 22:40:17 GMT\r\n")
  records = [info]
  for number, (url, text) in enumerate(pages, 1):
    records.append(_record(
        {"WARC-Type": "conversion", "WARC-Target-URI": url, "WARC-Date": "2019-08-17T21:00:00Z",
         "WARC-Record-ID": f"<urn:uuid:{uuid.UUID(int=number)}>",
         "WARC-Refers-To": f"<urn:uuid:{uuid.UUID(int=10_000 + number)}>",
         "Content-Type": "text/plain"},
        text.encode("utf-8") if isinstance(text, str) else text))
  return records


def write_wet(path: Path, pages: list[tuple[str, str]], compress: bool = True) -> Path:
  """CommonCrawl's layout: each record its own gzip member, concatenated."""
  records = wet_records(pages)
  path.write_bytes(b"".join(gzip.compress(r) for r in records) if compress else b"".join(records))
  return path
