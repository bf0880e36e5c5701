"""Decompressing untrusted input within limits.

A few megabytes of gzip can hold gigabytes (a decompression bomb: an arXiv tarball of 1.5 MB with
a 1.5 GB member took 3.35 GB of memory before these limits). Everything the pipelines decompress
themselves goes through here: output is produced in chunks and refused with `DecompressionBomb`
as soon as it passes a limit, so memory stays bounded by the limit whatever the input holds.
A stream that ends before its compressed data does raises EOFError (a truncated file). Streams
(`open_decompressed`: gzip, bz2, zstd) have the ratio limit only, since a WET file or a Wikipedia
dump legitimately decompresses to gigabytes; whole files (`decompress`, `read_within`: a stream
read to its end) have both.

Limits (`Limits`, defaults below, ours): 256 MiB out of one file (arXiv caps a submission at 50
MB), 128 MiB out of one archive member, and 200 times the compressed size once past 16 MiB (text
compresses 3-10 times; the zero-filled members of a bomb about 1000 times). Memory peaks at about
twice the file limit (the chunks and their join).
"""

from __future__ import annotations

import bz2
import dataclasses
import io
import zlib
from typing import BinaryIO

import zstandard

MIB = 2**20
_CHUNK = MIB
_ZSTD_PIECE = 16 * 2**10  # zstd input per call: at most a few hundred MiB out even for zeros


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
    self.check_ratio(produced, consumed, what)

  def check_ratio(self, produced: int, consumed: int, what: str = "the file") -> None:
    if produced > self.ratio_floor and produced > self.max_ratio * max(consumed, 1):
      raise DecompressionBomb(f"{what} decompresses to more than {self.max_ratio:g} times its "
                              f"compressed size ({consumed:,} bytes)")


LIMITS = Limits()


def _decompressor(codec: str):
  if codec == "gzip":
    return zlib.decompressobj(wbits=31)
  if codec == "bz2":
    return bz2.BZ2Decompressor()
  if codec == "zstd":
    return zstandard.ZstdDecompressor().decompressobj()
  raise ValueError(f"unknown codec {codec!r}; use 'gzip', 'bz2' or 'zstd'")


def decompress(data: bytes, codec: str, limits: Limits = LIMITS) -> bytes:
  """`data` (gzip, bz2 or zstd, every concatenated member) decompressed within `limits`."""
  stream = DecompressingReader(io.BytesIO(data), codec, limits=limits)
  return read_within(stream, len(data), "the file", limits)


def read_within(stream: BinaryIO, compressed_size: int, what: str,
                limits: Limits = LIMITS) -> bytes:
  """All of a decompressing `stream`, read a chunk at a time and refused with DecompressionBomb
  as soon as it passes `limits` (so a bomb is never held whole)."""
  chunks, produced = [], 0
  while chunk := stream.read(_CHUNK):
    chunks.append(chunk)
    produced += len(chunk)
    limits.check(produced, compressed_size, what)
  return b"".join(chunks)


class DecompressingReader(io.RawIOBase):
  """A readable stream of `raw` (gzip or bz2, concatenated members) decompressed on the fly,
  raising EOFError where the compressed data ends early (a truncated file, which the readers built
  into Beam and warcio end quietly at the cut) and DecompressionBomb once the output passes the
  ratio limit (no size limit: a Wikipedia or WET stream may be gigabytes). Memory is one chunk."""

  def __init__(self, raw: BinaryIO, codec: str, name: str = "the file", limits: Limits = LIMITS):
    super().__init__()
    self._raw, self._codec, self._name, self._limits = raw, codec, name, limits
    self._consumed = self._produced = 0
    self._decompressor = _decompressor(codec)
    self._pending = b""  # compressed input not yet given to the decompressor
    self._ready = b""  # decompressed output not yet read
    self._started = False  # whether the current member has begun

  def readable(self) -> bool:
    return True

  def readinto(self, buffer) -> int:
    while not self._ready:
      if not self._fill():
        return 0
    size = min(len(buffer), len(self._ready))
    buffer[:size] = self._ready[:size]
    self._ready = self._ready[size:]
    return size

  def _fill(self) -> bool:
    """Decompresses the next piece into _ready; False at the clean end of the input."""
    if self._decompressor.eof:
      self._pending = self._decompressor.unused_data + self._pending
      self._decompressor, self._started = _decompressor(self._codec), False
    holding = self._codec == "bz2" and not self._decompressor.needs_input  # output buffered
    if not self._pending and not holding:
      self._pending = self._raw.read(_CHUNK)
      self._consumed += len(self._pending)
      if not self._pending:
        if self._started:
          raise EOFError(f"compressed {self._codec} data ends early (a truncated file)")
        return False
    self._started = True
    if self._codec == "gzip":
      self._ready = self._decompressor.decompress(self._pending, _CHUNK)
      self._pending = self._decompressor.unconsumed_tail
    elif self._codec == "zstd":  # no output bound in zstandard's API: small pieces of input
      piece, self._pending = self._pending[:_ZSTD_PIECE], self._pending[_ZSTD_PIECE:]
      self._ready = self._decompressor.decompress(piece)
    else:
      self._ready = self._decompressor.decompress(self._pending, _CHUNK)
      self._pending = b""
    self._produced += len(self._ready)
    self._limits.check_ratio(self._produced, self._consumed, self._name)
    return True


CODECS = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd"}


def open_decompressed(raw: BinaryIO, name: str) -> BinaryIO:
  """`raw` decompressed by `name`'s extension (.gz, .bz2, .zst; other names as they are),
  buffered."""
  codec = next((codec for suffix, codec in CODECS.items() if name.endswith(suffix)), None)
  return raw if codec is None else io.BufferedReader(DecompressingReader(raw, codec, name), _CHUNK)


def damage_reason(error: Exception) -> str:
  """The malformed reason of what reading a compressed input raised: a bomb or a cut file."""
  return "decompression_bomb" if isinstance(error, DecompressionBomb) else "truncated_file"


# What a stream from `open_decompressed` raises besides what its format's reader does.
DAMAGE = (EOFError, DecompressionBomb)
