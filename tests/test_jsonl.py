"""llama_jax.jsonl: the one JSON-lines reader (file:line, compression by name, errors)."""

import gzip
import json

import pytest

from llama_jax.jsonl import read_jsonl


def test_records_come_with_file_and_line_blank_lines_skipped(tmp_path):
  path = tmp_path / "a.jsonl.gz"
  with gzip.open(path, "wt", encoding="utf-8") as f:
    f.write('{"n": 1}\n\n  \n{"n": 2}\n')
  assert list(read_jsonl(path)) == [(f"{path}:1", {"n": 1}), (f"{path}:4", {"n": 2})]


def test_a_line_separator_inside_a_string_splits_nothing(tmp_path):
  # JSON allows U+2028 raw in a string (json.dumps with ensure_ascii=False writes it so);
  # str.splitlines would cut the record there.
  path = tmp_path / "p.jsonl"
  path.write_text(json.dumps({"prompt": "a\u2028b"}, ensure_ascii=False) + "\n", encoding="utf-8")
  assert [record["prompt"] for _, record in read_jsonl(path)] == ["a\u2028b"]


def test_a_partial_last_line_is_left_out_only_when_asked(tmp_path):
  path = tmp_path / "m.jsonl"
  path.write_text('{"step": 1}\n{"step": 2')
  assert [r["step"] for _, r in read_jsonl(path, partial_last_line=True)] == [1]
  with pytest.raises(ValueError, match=r"m.jsonl:2: not valid JSON"):
    list(read_jsonl(path))


class CustomError(ValueError):
  pass


@pytest.mark.parametrize("content, message", [
    ("[1, 2]\n", r"bad.jsonl:1: expected a JSON object, got list"),
    ('{"a": 1}\nnope\n', r"bad.jsonl:2: not valid JSON"),
    (b"\xff\xfe\n", r"bad.jsonl: cannot be read"),
])
def test_faults_name_the_file_and_line_with_the_callers_error(tmp_path, content, message):
  path = tmp_path / "bad.jsonl"
  (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
  with pytest.raises(CustomError, match=message):
    list(read_jsonl(path, error=CustomError))
  with pytest.raises(CustomError, match="cannot be read"):
    list(read_jsonl(tmp_path / "missing.jsonl", error=CustomError))
