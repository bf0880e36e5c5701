"""The github source's rules, each on files that must pass and files that must fail, then the
whole `python -m preprocessing.run --source=github` on synthetic BigQuery exports."""

import argparse
import gzip
import json
from collections import Counter

import pytest
from conftest import written_documents

from preprocessing import github, run
from preprocessing.document import Document, Drop
from preprocessing.testing import synthetic_github


def _doc(text="x = 1\n", path="src/a.py", license_name="mit"):
  return Document(id=f"o/r/{path}", source="github", text=text,
                  metadata={"repo_name": "o/r", "path": path, "license": license_name})


def _row(**fields):
  row = {"repo_name": "octo/cli", "path": "main.py", "license": "mit", "content": "x = 1\n"}
  return {**row, **fields}


# --- parsing -------------------------------------------------------------------------------------

def test_parse_row_builds_the_document():
  doc = github.parse_row(json.dumps(_row(license="MIT", size=6)).encode(), "f:1")
  assert doc.id == "octo/cli/main.py" and doc.source == "github" and doc.text == "x = 1\n"
  assert doc.metadata == {"repo_name": "octo/cli", "path": "main.py", "license": "mit"}


def test_parse_row_null_license_is_none():
  assert github.parse_row(json.dumps(_row(license=None)).encode(), "f:1").metadata[
      "license"] == "none"


@pytest.mark.parametrize("raw, reason", [
    (b'{"repo_name": "a/b", "path": "x.py", "license": "mit", "content": "caf\xe9"}',
     "invalid_utf8"),
    (b'{"repo_name": "a/b", "path": "x.py", "license": "mit", "content": "\\ud800"}',
     "invalid_unicode"),
    (b'{"repo_name": "a/b", "path": "x.py"', "bad_json"),
    (b'["a/b", "x.py", "mit", "x"]', "bad_json"),
    (json.dumps({"repo_name": "a/b", "path": "x.py", "content": "x"}).encode(), "missing_field"),
    (json.dumps(_row(content=None)).encode(), "missing_field"),
    (json.dumps(_row(path=None)).encode(), "missing_field"),
    (json.dumps(_row(content=17)).encode(), "not_text"),
    (json.dumps(_row(license=["mit"])).encode(), "not_text"),
])
def test_parse_row_malformed(raw, reason):
  with pytest.raises(github.MalformedRow) as error:
    github.parse_row(raw, "f:3")
  assert error.value.reason == reason and error.value.where == "f:3"


# --- licence and extension -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["mit", "apache-2.0", "bsd-2-clause", "bsd-3-clause"])
def test_license_filter_keeps_llama_licenses(name):
  assert github.license_filter(_doc(license_name=name)) == _doc(license_name=name)


@pytest.mark.parametrize("name, reason", [
    ("gpl-2.0", "license_gpl_2_0"), ("agpl-3.0", "license_agpl_3_0"),
    ("lgpl-2.1", "license_lgpl_2_1"), ("unlicense", "license_unlicense"),
    ("none", "license_none"), ("", "license_none"),
])
def test_license_filter_drops_others(name, reason):
  assert github.license_filter(_doc(license_name=name)) == Drop(reason)


def test_license_filter_allowed_list_ignores_case():
  assert github.license_filter(_doc(license_name="gpl-3.0"), allowed=("GPL-3.0",)).id


@pytest.mark.parametrize("path", ["a.py", "src/main.c", "lib/x.min.js", "Dockerfile",
                                  "build/Makefile", "README.md", "x.H", "a.b/c.rs"])
def test_extension_kept(path):
  assert github.has_allowed_extension(path)
  assert github.extension_filter(_doc(path=path)).id


@pytest.mark.parametrize("path", ["package.json", "data.csv", "logo.png", "notes.txt",
                                  "src.py/README", "x.PY", "makefile.d/x"])
def test_extension_dropped(path):
  assert not github.has_allowed_extension(path)
  assert github.extension_filter(_doc(path=path)) == Drop("extension")


def test_extension_list_is_configurable():
  assert github.has_allowed_extension("a.json", (".json",))
  assert not github.has_allowed_extension("a.py", (".json",))


# --- licence headers -----------------------------------------------------------------------------

CODE = "import os\n\n\ndef main():\n  return os.getcwd()\n"


@pytest.mark.parametrize("header", [
    "# Copyright 2020 The Authors\n# Licensed under the MIT License.\n\n",
    "# SPDX-License-Identifier: MIT\n",
    "// Copyright (c) 2019 Acme\n//\n// Licensed under the Apache License, Version 2.0\n\n",
    "/*\n * Copyright (c) 2015, Jane Doe\n * All rights reserved.\n */\n\n",
    "/** Permission is hereby granted, free of charge, to any person */\n",
    "<!-- Licensed under the Apache License, Version 2.0 -->\n",
    "\n\n  # © 2021 Example Foundation\n\n",
    "// SPDX-License-Identifier: BSD-3-Clause\n/* Copyright 2018 Acme */\n\n",
    "# Copyright 2020 X\r\n# license: MIT\r\n\r\n",
])
def test_strip_license_header_removes_header(header):
  assert github.strip_license_header(header + CODE) == (CODE, True)


def test_strip_license_header_keeps_shebang_and_coding_line():
  text = ("#!/usr/bin/env python\n# -*- coding: utf-8 -*-\n# Copyright 2020 X\n# MIT License\n\n"
          + CODE)
  assert github.strip_license_header(text) == (
      "#!/usr/bin/env python\n# -*- coding: utf-8 -*-\n" + CODE, True)


def test_strip_license_header_keeps_xml_and_php_declarations():
  xml = '<?xml version="1.0"?>\n<!-- Copyright 2020 X, MIT license -->\n<project/>\n'
  assert github.strip_license_header(xml) == ('<?xml version="1.0"?>\n<project/>\n', True)
  php = "<?php\n/**\n * @copyright 2020 X\n * @license MIT\n */\necho 1;\n"
  assert github.strip_license_header(php) == ("<?php\necho 1;\n", True)


@pytest.mark.parametrize("text", [
    CODE,
    "# Helpers for the command line.\n\n# Copyright 2020 X\n" + CODE,  # not at the top
    "#include <stdio.h>\n#define LICENSE \"MIT\"\nint x;\n",  # preprocessor, not comments
    "/* Copyright 2020 X */ int x = 1;\n",  # code shares the comment's line
    "/* compute */ int x; /* Copyright X */\nint y;\n",
    "x = 1  # Copyright 2020 X\n",
    '"""Copyright 2020 X."""\n' + CODE,  # a docstring is not a comment
    "/* Copyright 2020 X, never closed\nint x;\n",
])
def test_strip_license_header_leaves_other_files(text):
  assert github.strip_license_header(text) == (text, False)


def test_header_filter_records_removal_and_drops_header_only_files():
  kept = github.header_filter(_doc("# Copyright 2020 X\n# MIT\n" + CODE))
  assert kept.text == CODE and kept.metadata["license_header_removed"] is True
  untouched = github.header_filter(_doc(CODE))
  assert untouched.text == CODE and untouched.metadata["license_header_removed"] is False
  assert github.header_filter(_doc("# Copyright 2020 X\n# Licensed under MIT\n\n")) == Drop(
      "empty")
  assert github.header_filter(_doc("  \n\n")) == Drop("empty")


# --- quality heuristics --------------------------------------------------------------------------

def test_measures():
  assert github.line_lengths("ab\ncde\n") == [2, 3]
  assert github.line_lengths("") == [0]
  assert github.alphanumeric_fraction("a1 ;") == 0.5
  assert github.alphanumeric_fraction("") == 0.0
  assert github.alpha_token_ratio("ab1 c2 ;") == 1.0
  assert github.alpha_token_ratio("  ") == 0.0


def test_quality_filter_keeps_ordinary_code():
  assert github.quality_filter(_doc(CODE)) == _doc(CODE)


@pytest.mark.parametrize("text, reason", [
    ("var a=1;" * 126 + "\n", "max_line_length"),  # 1008 characters on one line
    ("x = '" + "word " * 25 + "'\n", "mean_line_length"),  # 131 characters
    ("+-------+-------+\n| a     | b     |\n+-------+-------+\n", "alphanumeric_fraction"),
    ("T = [\n" + "1023, 2047, 4095, 8191,\n" * 20 + "]\n", "alpha_token_ratio"),
])
def test_quality_filter_drops(text, reason):
  assert github.quality_filter(_doc(text)) == Drop(reason)


def test_quality_thresholds_are_inclusive_limits():
  line = "a" * 1000
  assert github.quality_filter(_doc(line), max_mean_line_length=1000).id  # exactly 1000 passes
  assert github.quality_filter(_doc(line + "a"), max_mean_line_length=2000) == Drop(
      "max_line_length")
  assert github.quality_filter(_doc("ab c"), min_alpha_token_ratio=1.5).id  # 3 / 2 = 1.5
  assert github.quality_filter(_doc("ab ;"), min_alpha_token_ratio=1.5) == Drop(
      "alpha_token_ratio")


def test_content_hash_is_of_the_text_only():
  assert github.content_hash(_doc("x", path="a.py")) == github.content_hash(_doc("x", "b.c"))
  assert github.content_hash(_doc("x")) != github.content_hash(_doc("y"))


# --- arguments -----------------------------------------------------------------------------------

def _args(**overrides):
  parser = argparse.ArgumentParser()
  github.add_arguments(parser)
  args = parser.parse_args([])
  for key, value in overrides.items():
    setattr(args, key, value)
  return args


def test_defaults_are_the_documented_ones():
  args = _args()
  assert github.check_arguments(args) == []
  assert (args.max_line_length, args.max_mean_line_length, args.min_alphanumeric_fraction,
          args.min_alpha_token_ratio) == (1000, 100, 0.25, 1.5)
  assert args.licenses == "apache-2.0,bsd-2-clause,bsd-3-clause,mit"


def test_check_arguments_names_the_flags():
  problems = github.check_arguments(_args(licenses=" , ", extensions="", max_line_length=0,
                                          min_alphanumeric_fraction=1.5))
  assert len(problems) == 4
  assert [p.split()[0].split("=")[0] for p in problems] == [
      "--licenses", "--extensions", "--max_line_length", "--min_alphanumeric_fraction"]


# --- end to end ----------------------------------------------------------------------------------


def test_end_to_end_on_synthetic_export(tmp_path):
  count = 2 * len(synthetic_github.KINDS) + 3
  pattern = synthetic_github.write_sample_input(tmp_path / "in", count, seed=5)
  rows = list(synthetic_github.sample_rows(count, seed=5))
  stats = run.main(["--source=github", f"--input={pattern}", f"--output={tmp_path / 'out'}"])

  written = written_documents(tmp_path / "out")
  expected_kept = {f"{row['repo_name']}/{row['path']}" for row, outcome in rows
                   if outcome == "kept"}
  assert set(written) == expected_kept
  assert stats["documents_read"] == count
  assert stats["documents_written"] == len(expected_kept)
  assert stats["dropped"] == dict(sorted(Counter(o for _, o in rows if o != "kept").items()))
  assert stats["malformed"] == {}
  headers = Counter(doc.metadata["license_header_removed"] for doc in written.values())
  assert headers == {True: 8, False: 5}  # three MIT, three BSD and two Apache headers
  for doc in written.values():
    assert "Copyright" not in doc.text and doc.source == "github"
    assert doc.id == f"{doc.metadata['repo_name']}/{doc.metadata['path']}"
  assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats


def test_end_to_end_counts_malformed_input(tmp_path):
  good = [_row(repo_name="a/one", path="x.py", content="import os\nprint(os.sep)\n"),
          _row(repo_name="b/two", path="y.py", content="import os\nprint(os.sep)\n"),
          _row(repo_name="a/one", path="z.py", content="# Copyright 2020 X\n# MIT\n\n"
               "def f(value):\n  return value + 1\n")]
  lines = [json.dumps(r).encode() for r in good] + [
      b"not json at all",
      b'{"repo_name": "c/three", "path": "bad.py", "license": "mit", "content": "\xff\xfe"}',
      json.dumps(_row(content=None, binary=True)).encode(),
      b"",
  ]
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
  (tmp_path / "in" / "c.jsonl.gz").write_bytes(b"not gzip at all\n")
  gpl_rows = (json.dumps(_row(repo_name=f"d/{i}", license="gpl-2.0")) for i in range(200))
  whole = gzip.compress("\n".join(gpl_rows).encode())
  (tmp_path / "in" / "b.jsonl.gz").write_bytes(whole[:len(whole) // 2])
  stats = run.main(["--source=github", f"--input={tmp_path / 'in' / '*.jsonl*'}",
                    f"--output={tmp_path / 'out'}"])
  written = written_documents(tmp_path / "out")
  assert set(written) == {"a/one/x.py", "a/one/z.py"}
  assert written["a/one/z.py"].text == "def f(value):\n  return value + 1\n"
  assert stats["malformed"] == {"bad_json": 1, "broken_archive": 1, "invalid_utf8": 1,
                                "missing_field": 1, "truncated_file": 1}
  assert stats["dropped"]["duplicate_content"] == 1
