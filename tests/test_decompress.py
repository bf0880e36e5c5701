"""Bounded decompression (preprocessing.decompress) and the arXiv tarball bomb it stops."""

import bz2
import gzip
import io
import random
import tarfile
import tracemalloc

import pytest
import zstandard

from preprocessing.arxiv import UnpackError, read_paper, unpack
from preprocessing.decompress import (
    LIMITS,
    MIB,
    DecompressionBomb,
    Limits,
    decompress,
    open_decompressed,
)
from preprocessing.wet import Malformed, read_wet, wet_bytes

TEXT = "\n".join(f"line {i}: the quick brown fox" for i in range(20_000)).encode()
COMPRESS = {"gzip": gzip.compress, "bz2": bz2.compress}


@pytest.mark.parametrize("codec", ["gzip", "bz2"])
def test_every_member_is_decompressed(codec):
  half = len(TEXT) // 2
  data = COMPRESS[codec](TEXT[:half]) + COMPRESS[codec](TEXT[half:])
  assert decompress(data, codec) == TEXT


@pytest.mark.parametrize("codec", ["gzip", "bz2"])
def test_a_truncated_stream_is_an_error(codec):
  data = COMPRESS[codec](TEXT)
  for cut in (len(data) // 3, len(data) - 5):
    with pytest.raises(EOFError, match="ends early"):
      decompress(data[:cut], codec)


def _peak_bytes(fn):
  tracemalloc.start()
  try:
    fn()
  finally:
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
  return peak


@pytest.mark.parametrize("codec", ["gzip", "bz2"])
def test_output_past_the_limit_is_refused_in_bounded_memory(codec):
  bomb = COMPRESS[codec](bytes(64 * MIB))  # 64 MiB of zeros in a few kilobytes
  limits = Limits(max_bytes=4 * MIB)

  def attempt():
    with pytest.raises(DecompressionBomb, match="more than 4,194,304 bytes"):
      decompress(bomb, codec, limits)

  assert _peak_bytes(attempt) < 8 * MIB


def test_the_ratio_limit():
  data = gzip.compress(bytes(8 * MIB))
  with pytest.raises(DecompressionBomb, match="more than 100 times its compressed size"):
    decompress(data, "gzip", Limits(max_ratio=100, ratio_floor=MIB))
  assert len(decompress(data, "gzip")) == 8 * MIB  # within the default limits


def _tarball_bomb(member_bytes: int) -> bytes:
  """A .tar.gz whose one member, main.tex, is `member_bytes` of zeros: a tar header in one gzip
  member, then the same 1 MiB zero member repeated (gzip allows concatenated members)."""
  info = tarfile.TarInfo("main.tex")
  info.size = member_bytes
  zeros = gzip.compress(bytes(MIB), compresslevel=9)
  return gzip.compress(info.tobuf()) + zeros * (member_bytes // MIB)


def test_a_15_mb_arxiv_bomb_is_malformed_and_memory_stays_bounded():
  bomb = _tarball_bomb(14_000 * MIB)  # 14.7 GB out of 14.3 MB in
  assert len(bomb) < 16 * 10**6
  result = []
  peak = _peak_bytes(lambda: result.append(read_paper(bomb, "arxiv/2301.00001.tar.gz")))
  assert result == [Malformed("decompression_bomb", "arxiv/2301.00001.tar.gz")]
  # The limit's worth of output and copies of the unread compressed tail, not 14.7 GB.
  assert peak < 1.25 * LIMITS.max_bytes


def test_a_member_larger_than_its_limit_is_a_bomb():
  archive = io.BytesIO()
  with tarfile.open(fileobj=archive, mode="w") as tar:
    info = tarfile.TarInfo("main.tex")
    info.size = 2 * MIB
    tar.addfile(info, io.BytesIO(bytes(2 * MIB)))
  with pytest.raises(UnpackError, match="decompression_bomb"):
    unpack(gzip.compress(archive.getvalue()), "2301.00001", Limits(max_member_bytes=MIB))


def _wet_items(data: bytes):
  return list(read_wet(open_decompressed(io.BytesIO(data), "x.warc.wet.gz"), "x.warc.wet.gz"))


def test_a_wet_file_cut_anywhere_is_reported_with_the_records_before_kept():
  words = [f"w{n}" for n in random.Random(0).choices(range(50_000), k=40_000)]
  pages = [(f"https://example.com/{i}", f"page {i} " + " ".join(words[i::20])) for i in range(20)]
  data = wet_bytes(pages)
  assert len(data) > 100_000
  assert [item.text[:7] for item in _wet_items(data)] == [f"page {i} "[:7] for i in range(20)]
  for cut in (20000, len(data) // 3, len(data) // 2 + 7, len(data) - 10):
    items = _wet_items(data[:cut])
    documents = [item for item in items if not isinstance(item, Malformed)]
    malformed = [item.reason for item in items if isinstance(item, Malformed)]
    assert malformed in (["truncated_file"], ["truncated_record"], ["truncated_record",
                                                                   "truncated_file"]), (cut, items)
    assert [d.text for d in documents] == [text for _, text in pages[:len(documents)]]


def test_a_compressed_stream_bomb_stops_at_the_ratio_limit():
  bomb = gzip.compress(bytes(MIB)) * 200  # 200 MiB of zeros in 200 KB: ratio about 1000
  stream = open_decompressed(io.BytesIO(bomb), "rows.jsonl.gz")
  read = []

  def attempt():
    with pytest.raises(DecompressionBomb, match="200 times its compressed size"):
      while chunk := stream.read(MIB):
        read.append(len(chunk))

  assert _peak_bytes(attempt) < 8 * MIB
  # Stopped once past 200 times what it had consumed (all of it, in one read), not at 200 MiB.
  assert LIMITS.max_ratio * len(bomb) - 2 * MIB < sum(read) <= LIMITS.max_ratio * len(bomb)
  # In a WET file: a record that expands past the ratio, and one that declares more than a
  # member may hold (never read into memory).
  for declared, body in ((64 * MIB, bytes(64 * MIB)), (LIMITS.max_member_bytes + 1, b"x" * 100)):
    record = (b"WARC/1.0\r\nWARC-Type: conversion\r\nWARC-Target-URI: https://example.com/\r\n"
              b"WARC-Record-ID: <urn:uuid:0>\r\nContent-Length: %d\r\n\r\n" % declared + body)
    assert [item.reason for item in _wet_items(gzip.compress(record))] == ["decompression_bomb"]


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".zst"])
def test_streams_of_every_codec_read_whole_and_report_a_cut(suffix):
  compress = {".gz": gzip.compress, ".bz2": bz2.compress,
              ".zst": zstandard.ZstdCompressor().compress}[suffix]
  data = compress(TEXT[:5000]) + compress(TEXT[5000:])
  assert open_decompressed(io.BytesIO(data), "rows.jsonl" + suffix).read() == TEXT
  for cut in (50, len(data) // 2, len(data) - 3):
    with pytest.raises(EOFError, match="ends early"):
      open_decompressed(io.BytesIO(data[:cut]), "rows.jsonl" + suffix).read()
