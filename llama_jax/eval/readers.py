"""Reading the benchmarks' released files (JSON lines, JSON, CSV/TSV, labels files), for both task
families: each record comes with its "file:line", and every fault (a missing file, bad JSON, a
missing or mistyped field) raises `TaskDataError` naming the file, line and field."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from llama_jax import jsonl


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """What both task families know of a benchmark's release (the base of their task classes)."""

  name: str
  title: str
  published: str  # where the released files come from, for "file not found" messages
  harness_task: str | None  # the lm-evaluation-harness task whose prompts these are
  files: tuple[str, ...]  # the evaluated split, relative to --data_dir ("dir/" for a directory)


class TaskDataError(ValueError):
  """A benchmark file is missing or malformed; the message names the file, line and field."""


def require_file(task: Benchmark, data_dir: Path, relative: str) -> Path:
  """data_dir/relative, which must exist: a file, or a directory where `relative` ends in "/"."""
  path = Path(data_dir) / relative
  directory = relative.endswith("/")
  if not (path.is_dir() if directory else path.is_file()):
    what = f"{path.name}/ directory" if directory else path.name
    raise TaskDataError(
        f"{task.name}: {path} not found. {task.title} is published at {task.published}; "
        f"put its {what} at {path} (--data_dir={data_dir})")
  return path


def _json_object(record, source: str) -> dict:
  if not isinstance(record, dict):
    raise TaskDataError(f"{source}: expected a JSON object, got {type(record).__name__}")
  return record


def read_jsonl(path: Path) -> Iterator[tuple[str, dict]]:
  """("file:line", object) for each non-empty line of a JSON-lines file, gzipped or not."""
  return jsonl.read_jsonl(path, error=TaskDataError)


def _parse_json(path: Path, text: str):
  try:
    return json.loads(text)
  except json.JSONDecodeError as error:
    raise TaskDataError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None


def read_json_object(path: Path) -> tuple[str, dict]:
  """("file:1", object) of a JSON file holding one object, as MATH's one file per problem."""
  source = f"{path}:1"
  return source, _json_object(_parse_json(path, path.read_text(encoding="utf-8")), source)


def read_json_array(path: Path, key: str | None = None) -> Iterator[tuple[str, dict]]:
  """("file:line", object) for each object of a JSON file holding one array of objects, or
  (with `key`) one object whose `key` holds it, as TriviaQA's {"Data": [...]}."""
  text = path.read_text(encoding="utf-8")
  document = _parse_json(path, text)
  if key is None:
    items = document
  else:
    items = document.get(key) if isinstance(document, dict) else None
  if not isinstance(items, list):
    expected = f"object with an array {key!r}" if key else "array of objects"
    raise TaskDataError(f"{path}:1: expected a JSON {expected}, got {type(document).__name__}")
  # Decoded again item by item, to know the line each one starts on.
  decoder, space = json.JSONDecoder(), re.compile(r"[\s,:]*")
  if key is None:
    position = text.index("[") + 1
  else:  # the top-level keys are walked to where `key`'s array starts
    position = text.index("{") + 1
    while True:
      name, position = decoder.raw_decode(text, space.match(text, position).end())
      position = space.match(text, position).end()
      if name == key:
        break
      _, position = decoder.raw_decode(text, position)
    position += 1  # past the array's "["
  line = text.count("\n", 0, position) + 1
  for index in range(len(items)):
    start = space.match(text, position).end()
    line += text.count("\n", position, start)
    record, position = decoder.raw_decode(text, start)
    # Under a key, the item's index too: such files are often one line (TriviaQA's train).
    source = f"{path}:{line}" + (f" ({key}[{index}])" if key else "")
    yield source, _json_object(record, source)
    line += text.count("\n", start, position)


def read_table(path: Path, columns: Sequence[str], *, header: bool,
               delimiter: str = ",") -> Iterator[tuple[str, dict[str, str]]]:
  """("file:line", {column: value}) for each row of a CSV file (of a TSV file, unquoted, with
  delimiter="\\t"), checked for its number of fields; a header line is skipped."""
  quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
  with open(path, encoding="utf-8", newline="") as f:
    reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
    start = 1
    try:
      for index, row in enumerate(reader):
        source, start = f"{path}:{start}", reader.line_num + 1  # rows may span lines
        if not row or (header and index == 0):
          continue
        if len(row) != len(columns):
          missing = f"; field {columns[len(row)]!r} is missing" if len(row) < len(columns) else ""
          raise TaskDataError(f"{source}: {len(row)} fields where {len(columns)} are expected "
                              f"({', '.join(columns)}){missing}")
        yield source, dict(zip(columns, row, strict=True))
    except csv.Error as error:
      raise TaskDataError(f"{path}:{reader.line_num}: not valid CSV ({error})") from None


def field(record: dict, name: str, source: str, kind: type | tuple[type, ...] = str):
  """record[name], checked for presence and type. `name` may be dotted ("question.stem")."""
  value = record
  for part in name.split("."):
    if not isinstance(value, dict) or part not in value:
      raise TaskDataError(f"{source}: field {name!r} is missing")
    value = value[part]
  if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
    expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
    raise TaskDataError(f"{source}: field {name!r} should be {expected}, got {value!r}")
  return value


def strings(record: dict, name: str, source: str, count: int | None = None) -> list[str]:
  """record[name] checked to be a list of strings (of `count` of them, if given)."""
  values = field(record, name, source, list)
  if not all(isinstance(v, str) for v in values) or count not in (None, len(values)):
    expected = f"{count} strings" if count is not None else "a list of strings"
    raise TaskDataError(f"{source}: field {name!r} should be {expected}, got {values!r}")
  return values


def read_labels(path: Path, count: int, allowed: Sequence[str]) -> list[str]:
  """A labels file (one label per line, parallel to a JSONL file of `count` items)."""
  labels = []
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, 1):
      label = line.strip()
      if label not in allowed:
        raise TaskDataError(f"{path}:{number}: label {label!r} is not one of {list(allowed)}")
      labels.append(label)
  if len(labels) != count:
    raise TaskDataError(f"{path}:{min(len(labels), count) + 1}: {len(labels)} labels for {count} "
                        "items; a labels file has one label per line, one for each item of its "
                        "JSONL file")
  return labels
