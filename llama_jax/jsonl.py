"""JSON lines, read one way everywhere: each record with its "file:line", gzip and zstd files
opened by their names, blank lines skipped, and a line that is not a JSON object, or a file that
cannot be read, raised as an error naming the file and line.

(The Beam pipelines read JSON lines through Beam's file systems and count a bad line instead of
stopping: preprocessing.pipeline.)
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Iterator
from pathlib import Path


def open_text(path: str | Path) -> io.TextIOBase:
  """A UTF-8 text file, decompressed by its name (.gz, .zst); lines end at "\\n" only, so the
  line numbers are those of an editor and a U+2028 inside a JSON string splits nothing."""
  path = str(path)
  if path.endswith(".gz"):
    return gzip.open(path, "rt", encoding="utf-8", newline="\n")
  if path.endswith(".zst"):
    import zstandard  # the `data` extra; only .zst input needs it

    stream = zstandard.ZstdDecompressor().stream_reader(open(path, "rb"), closefd=True)
    return io.TextIOWrapper(stream, encoding="utf-8", newline="\n")
  return open(path, encoding="utf-8", newline="\n")


def read_jsonl(path: str | Path, *, error: type[Exception] = ValueError,
               partial_last_line: bool = False) -> Iterator[tuple[str, dict]]:
  """("file:line", object) for each non-blank line of a JSON-lines file.

  `error` is the exception raised for a bad line or an unreadable file. With
  `partial_last_line`, a last line without its newline is left out (a file still being written,
  as metrics.jsonl by a running trainer) instead of read.
  """
  try:
    with open_text(path) as f:
      for number, line in enumerate(f, 1):
        if partial_last_line and not line.endswith("\n"):
          return
        if not line.strip():
          continue
        where = f"{path}:{number}"
        try:
          record = json.loads(line)
        except json.JSONDecodeError as problem:
          raise error(f"{where}: not valid JSON ({problem})") from None
        if not isinstance(record, dict):
          raise error(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield where, record
  except (OSError, EOFError, UnicodeDecodeError) as problem:  # missing, truncated, not gzip
    raise error(f"{path}: cannot be read ({problem})") from None
