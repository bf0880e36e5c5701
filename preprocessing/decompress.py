"""Decompressing untrusted input within limits.

A few megabytes of gzip can hold gigabytes (a decompression bomb: an arXiv tarball of 1.5 MB with
a 1.5 GB member took 3.35 GB of memory before these limits). Everything the pipelines decompress
themselves goes through here: output is produced in chunks and refused with `DecompressionBomb`
as soon as it passes a limit, so memory stays bounded by the limit whatever the input holds.
A stream that ends before its compressed data does raises EOFError (a truncated file).

Limits (`Limits`, defaults below, ours): 256 MiB out of one file (arXiv caps a submission at 50
MB), 128 MiB out of one archive member, and 200 times the compressed size once past 16 MiB (text
compresses 3-10 times; the zero-filled members of a bomb about 1000 times). Memory peaks at about
twice the file limit (the chunks and their join).
"""

from __future__ import annotations

import bz2
import dataclasses
import zlib

MIB = 2**20
_CHUNK = MIB


class DecompressionBomb(Exception):
  """Output past a limit; the message says which."""


@dataclasses.dataclass(frozen=True)
class Limits:
  max_bytes: int = 256 * MIB  # out of one file
  max_member_bytes: int = 128 * MIB  # out of one archive member
  max_ratio: float = 200.0  # out / in, checked once the output passes ratio_floor
  ratio_floor: int = 16 * MIB

  def check(self, produced: int, consumed: int, what: str = "the file") -> None:
    if produced > self.max_bytes:
      raise DecompressionBomb(f"{what} decompresses to more than {self.max_bytes:,} bytes")
    if produced > self.ratio_floor and produced > self.max_ratio * max(consumed, 1):
      raise DecompressionBomb(f"{what} decompresses to more than {self.max_ratio:g} times its "
                              f"compressed size ({consumed:,} bytes)")


LIMITS = Limits()


def _decompressor(codec: str):
  if codec == "gzip":
    return zlib.decompressobj(wbits=31)
  if codec == "bz2":
    return bz2.BZ2Decompressor()
  raise ValueError(f"unknown codec {codec!r}; use 'gzip' or 'bz2'")


def decompress(data: bytes, codec: str, limits: Limits = LIMITS) -> bytes:
  """`data` (gzip or bz2, every concatenated member) decompressed within `limits`."""
  chunks, produced = [], 0
  rest = data
  while rest:
    decompressor = _decompressor(codec)
    pending = rest
    while not decompressor.eof:
      if codec == "gzip":
        piece = decompressor.decompress(pending, _CHUNK)
        pending = decompressor.unconsumed_tail
        starved = not pending and not piece
      else:
        piece = decompressor.decompress(pending, _CHUNK)
        pending = b""
        starved = decompressor.needs_input and not piece
      chunks.append(piece)
      produced += len(piece)
      limits.check(produced, len(data))
      if starved and not decompressor.eof:
        raise EOFError(f"compressed {codec} data ends early (after {produced:,} bytes out)")
    rest = decompressor.unused_data
  return b"".join(chunks)
