"""`--source=github`: source files from the public BigQuery GitHub dataset (LLaMA paper 2.1).

Input: JSON lines (optionally .gz), one file per line, as the BigQuery `github_repos` tables
`files` and `contents` joined with `licenses` export them: {"repo_name", "path", "license",
"content", ...}; other fields are ignored. The document id is repo_name + "/" + path.

Rules, in order, each a plain function (drop reason in brackets):
  1. keep repositories under Apache-2.0, BSD-2-Clause, BSD-3-Clause or MIT, as LLaMA does, spelled
     as BigQuery's `licenses` table spells them, ignoring case        (`license_<name>`, snake_case)
  2. keep files whose name ends in a whitelisted source-code extension (`extension`); the default
     list is RedPajama-Data v1's (`data_prep/github`), matched case-sensitively as there
  3. strip licence/copyright header comments at the top of the file (metadata
     `license_header_removed`); a file that was only a header is dropped  (`empty`)
  4. RedPajama-Data v1's quality heuristics on what is left: longest line over 1000 characters
     (`max_line_length`), mean line length over 100 (`mean_line_length`), fraction of
     alphanumeric characters below 0.25 (`alphanumeric_fraction`), alphabetic characters per
     token below 1.5 (`alpha_token_ratio`)
  5. exact deduplication by the SHA-256 of the kept text across the dataset, keeping the file with
     the smallest id                                                    (`duplicate_content`)

Departures from RedPajama: tokens for the alpha/token ratio are whitespace-separated words, not
the tokens of a subword tokenizer (no model download; it only lowers the ratio of files of long
identifiers, which pass anyway). The heuristics and the dedup see the file after its licence header
is removed, because that is the text that is kept: files that differ only in their header's years
or holder are duplicates.

Malformed input (counted by report_malformed, never fatal): `invalid_utf8` (undecodable bytes),
`invalid_unicode` (lone surrogates from JSON escapes, which cannot be written back as UTF-8),
`bad_json` (not a JSON object), `missing_field` (repo_name, path, license or content absent, or
repo_name/path/content null: BigQuery leaves `content` null for binary files), `not_text` (a field
that is not a string), `truncated_file` (a .gz / .bz2 that ends early), `decompression_bomb`
(one that expands past preprocessing.decompress's ratio limit), `broken_archive` (a corrupt one);
the rows before the break are kept. A null licence is a repository without one and is dropped by
rule 1 as `license_none`.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import re
import zlib
from collections.abc import Iterable

import apache_beam as beam
from apache_beam.io import fileio

from preprocessing import pipeline
from preprocessing.decompress import DAMAGE, damage_reason
from preprocessing.document import Document, Drop

ALLOWED_LICENSES = ("apache-2.0", "bsd-2-clause", "bsd-3-clause", "mit")
# RedPajama-Data v1 data_prep/github's whitelist; "Dockerfile" and "Makefile" are whole names.
EXTENSIONS = (
    ".asm", ".bat", ".cmd", ".c", ".h", ".cs", ".cpp", ".hpp", ".c++", ".h++", ".cc", ".hh", ".C",
    ".H", ".cmake", ".css", ".dockerfile", ".f90", ".f", ".f03", ".f08", ".f77", ".f95", ".for",
    ".fpp", ".go", ".hs", ".html", ".java", ".js", ".jl", ".lua", ".md", ".markdown", ".php",
    ".php3", ".php4", ".php5", ".phps", ".phpt", ".pl", ".pm", ".pod", ".perl", ".ps1", ".psd1",
    ".psm1", ".py", ".rb", ".rs", ".sql", ".scala", ".sh", ".bash", ".command", ".zsh", ".ts",
    ".tsx", ".tex", ".vb", "Dockerfile", "Makefile", ".xml", ".rst", ".m", ".smali")
MAX_LINE_LENGTH = 1000
MAX_MEAN_LINE_LENGTH = 100
MIN_ALPHANUMERIC_FRACTION = 0.25
MIN_ALPHA_TOKEN_RATIO = 1.5
REQUIRED_FIELDS = ("repo_name", "path", "license", "content")

# Lines kept above a removed header: they change how the file runs or is read.
_PREAMBLE = re.compile(r"#!.*|#.*coding[:=].*|<\?(?:xml|php)\b.*", re.IGNORECASE)
# `#` followed by a word is a C preprocessor line (#include, #define), not a comment.
_LINE_COMMENT = re.compile(r"[ \t]*(?://|#(?=[\s#*=-]|$))")
# A block may not run past its first terminator, so a comment followed by code on the same line
# is never mistaken for a block ending at some later "*/".
_BLOCK_COMMENT = re.compile(
    r"[ \t]*(?:/\*(?:[^*]|\*(?!/))*\*/|<!--(?:[^-]|-(?!->))*-->)[ \t]*(?:\r?\n|$)")
_BLANK_LINES = re.compile(r"(?:[ \t]*\r?\n)+")
_HEADER_WORDS = re.compile(
    r"copyright|\(c\)|©|licen[cs]e|permission is hereby granted|spdx-license-identifier"
    r"|all rights reserved", re.IGNORECASE)


class MalformedRow(ValueError):
  def __init__(self, reason: str, where: str):
    super().__init__(f"{where}: {reason}")
    self.reason, self.where = reason, where


def parse_row(raw: bytes, where: str) -> Document:
  """A Document from one exported line; raises MalformedRow (see the module docstring)."""
  try:
    line = raw.decode("utf-8")
  except UnicodeDecodeError:
    raise MalformedRow("invalid_utf8", where) from None
  try:
    row = json.loads(line)
  except json.JSONDecodeError:
    raise MalformedRow("bad_json", where) from None
  if not isinstance(row, dict):
    raise MalformedRow("bad_json", where)
  if (any(k not in row for k in REQUIRED_FIELDS)
      or any(row[k] is None for k in REQUIRED_FIELDS if k != "license")):
    raise MalformedRow("missing_field", where)
  license_name = row["license"] if row["license"] is not None else "none"
  fields = (row["repo_name"], row["path"], license_name, row["content"])
  if not all(isinstance(value, str) for value in fields):
    raise MalformedRow("not_text", where)
  try:
    for value in fields:
      value.encode("utf-8")
  except UnicodeEncodeError:
    raise MalformedRow("invalid_unicode", where) from None
  repo_name, path, license_name, content = fields
  return Document(id=f"{repo_name}/{path}", source="github", text=content,
                  metadata={"repo_name": repo_name, "path": path,
                            "license": license_name.strip().lower()})


def read_github_file(readable: fileio.ReadableFile) -> Iterable[Document]:
  """Documents from one exported JSONL file; bad rows and broken archives are counted."""
  path = readable.metadata.path
  number = 0
  try:
    with pipeline.open_input(readable) as stream:
      for number, raw in enumerate(iter(stream.readline, b""), 1):
        if not raw.strip():
          continue
        try:
          doc = parse_row(raw, f"{path}:{number}")
        except MalformedRow as error:
          pipeline.report_malformed(error.reason, error.where)
          continue
        pipeline.count("documents_read")
        yield doc
  except DAMAGE as error:  # the rows before the cut or the bomb are kept
    pipeline.report_malformed(damage_reason(error), f"{path} after line {number}: {error}")
  except (OSError, zlib.error) as error:
    pipeline.report_malformed("broken_archive", f"{path} after line {number}: {error}")
  if pipeline.progress_bar is not None:
    pipeline.progress_bar.update(readable.metadata.size_in_bytes)


def license_reason(license_name: str) -> str:
  return "license_" + (re.sub(r"[^a-z0-9]+", "_", license_name.lower()).strip("_") or "none")


def license_filter(doc: Document, allowed: Iterable[str] = ALLOWED_LICENSES) -> Document | Drop:
  name = doc.metadata["license"]
  if name in {a.lower() for a in allowed}:
    return doc
  return Drop(license_reason(name))


def has_allowed_extension(path: str, extensions: Iterable[str] = EXTENSIONS) -> bool:
  return path.rsplit("/", 1)[-1].endswith(tuple(extensions))


def extension_filter(doc: Document, extensions: Iterable[str] = EXTENSIONS) -> Document | Drop:
  return doc if has_allowed_extension(doc.metadata["path"], extensions) else Drop("extension")


def _skip_blank_lines(text: str) -> str:
  match = _BLANK_LINES.match(text)
  return text[match.end():] if match else text


def _comment_block_end(text: str) -> int | None:
  """Where the comment block at the start of `text` ends, or None if it does not start one."""
  if match := _BLOCK_COMMENT.match(text):
    return match.end()
  end = 0
  for line in text.splitlines(keepends=True):
    if not _LINE_COMMENT.match(line):
      break
    end += len(line)
  return end or None


def strip_license_header(text: str) -> tuple[str, bool]:
  """`text` without the licence/copyright comment blocks at its top, and whether any was removed.

  Shebang, encoding and `<?xml`/`<?php` lines above the header are kept. Consecutive header blocks
  (an SPDX line, then a copyright block) are all removed; the first comment block that mentions
  none of the header words ends the search, so comments further down are never touched.
  """
  lines = text.splitlines(keepends=True)
  preamble = 0
  while preamble < len(lines) and _PREAMBLE.fullmatch(lines[preamble].strip()):
    preamble += 1
  head, rest = "".join(lines[:preamble]), "".join(lines[preamble:])
  removed = False
  while True:
    body = _skip_blank_lines(rest)
    end = _comment_block_end(body)
    if end is None or not _HEADER_WORDS.search(body[:end]):
      break
    rest, removed = body[end:], True
  if not removed:
    return text, False
  return head + _skip_blank_lines(rest), True


def header_filter(doc: Document) -> Document | Drop:
  text, removed = strip_license_header(doc.text)
  if not text.strip():
    return Drop("empty")
  return dataclasses.replace(doc, text=text,
                             metadata={**doc.metadata, "license_header_removed": removed})


def line_lengths(text: str) -> list[int]:
  return [len(line) for line in text.splitlines()] or [0]


def alphanumeric_fraction(text: str) -> float:
  return sum(c.isalnum() for c in text) / len(text) if text else 0.0


def alpha_token_ratio(text: str) -> float:
  """Alphabetic characters per whitespace-separated token."""
  tokens = text.split()
  return sum(c.isalpha() for c in text) / len(tokens) if tokens else 0.0


def quality_filter(doc: Document, max_line_length: int = MAX_LINE_LENGTH,
                   max_mean_line_length: float = MAX_MEAN_LINE_LENGTH,
                   min_alphanumeric_fraction: float = MIN_ALPHANUMERIC_FRACTION,
                   min_alpha_token_ratio: float = MIN_ALPHA_TOKEN_RATIO) -> Document | Drop:
  """RedPajama-Data v1's four file heuristics, checked in this order."""
  lengths = line_lengths(doc.text)
  if max(lengths) > max_line_length:
    return Drop("max_line_length")
  if sum(lengths) / len(lengths) > max_mean_line_length:
    return Drop("mean_line_length")
  if alphanumeric_fraction(doc.text) < min_alphanumeric_fraction:
    return Drop("alphanumeric_fraction")
  if alpha_token_ratio(doc.text) < min_alpha_token_ratio:
    return Drop("alpha_token_ratio")
  return doc


def content_hash(doc: Document) -> str:
  return hashlib.sha256(doc.text.encode("utf-8")).hexdigest()


def _comma_list(value: str) -> list[str]:
  return [item.strip() for item in value.split(",") if item.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group("github")
  group.add_argument("--licenses", default=",".join(ALLOWED_LICENSES),
                     help="comma-separated licences to keep, BigQuery spelling, any case "
                          "(github; default: LLaMA's Apache, BSD and MIT)")
  group.add_argument("--extensions", default=",".join(EXTENSIONS),
                     help="comma-separated file-name endings to keep, case-sensitive "
                          "(github; default: RedPajama-Data v1's source-code whitelist)")
  group.add_argument("--max_line_length", type=int, default=MAX_LINE_LENGTH,
                     help="drop files with a longer line "
                          "(github; default: RedPajama-Data v1's 1000)")
  group.add_argument("--max_mean_line_length", type=float, default=MAX_MEAN_LINE_LENGTH,
                     help="drop files with a longer mean line "
                          "(github; default: RedPajama-Data v1's 100)")
  group.add_argument("--min_alphanumeric_fraction", type=float,
                     default=MIN_ALPHANUMERIC_FRACTION,
                     help="drop files with a smaller fraction of alphanumeric characters (github; "
                          "default: RedPajama-Data v1's 0.25)")
  group.add_argument("--min_alpha_token_ratio", type=float, default=MIN_ALPHA_TOKEN_RATIO,
                     help="drop files with fewer alphabetic characters per whitespace-separated "
                          "token (github; default: RedPajama-Data v1's 1.5, which counts "
                          "tokenizer tokens)")


def check_arguments(args: argparse.Namespace) -> list[str]:
  """Problems with the github arguments, each naming the flag and the fix."""
  problems = []
  if not _comma_list(args.licenses):
    problems.append("--licenses is empty; give licences to keep, e.g. --licenses=mit,apache-2.0")
  if not _comma_list(args.extensions):
    problems.append("--extensions is empty; give file endings to keep, e.g. --extensions=.py,.c")
  for flag in ("max_line_length", "max_mean_line_length", "min_alpha_token_ratio"):
    if getattr(args, flag) <= 0:
      problems.append(f"--{flag}={getattr(args, flag)}: must be positive")
  if not 0 <= args.min_alphanumeric_fraction <= 1:
    problems.append(f"--min_alphanumeric_fraction={args.min_alphanumeric_fraction}: "
                    "must be between 0 and 1")
  return problems


def build(root: beam.Pipeline, args: argparse.Namespace) -> beam.PCollection:
  filters = [
      functools.partial(license_filter, allowed=tuple(_comma_list(args.licenses))),
      functools.partial(extension_filter, extensions=tuple(_comma_list(args.extensions))),
      header_filter,
      functools.partial(quality_filter, max_line_length=args.max_line_length,
                        max_mean_line_length=args.max_mean_line_length,
                        min_alphanumeric_fraction=args.min_alphanumeric_fraction,
                        min_alpha_token_ratio=args.min_alpha_token_ratio),
  ]
  return (root
          | "ReadGithub" >> pipeline.ReadFiles(args.input, read_github_file)
          | "Filter" >> beam.ParDo(pipeline.ApplyFilters(filters))
          | "DedupContent" >> pipeline.DeduplicateDocuments(content_hash,
                                                            reason="duplicate_content"))
