"""Bounded decompression (preprocessing.decompress) and the arXiv tarball bomb it stops."""

import bz2
import gzip
import io
import tarfile
import tracemalloc

import pytest

from preprocessing.arxiv import UnpackError, read_paper, unpack
from preprocessing.decompress import LIMITS, MIB, DecompressionBomb, Limits, decompress
from preprocessing.wet import Malformed

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
