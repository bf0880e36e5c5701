"""Synthetic BigQuery GitHub exports for benchmarks and tests (seeded, no download).

Rows look like the `github_repos` files/contents tables joined with `licenses`, one JSON object
per line in gzipped JSONL shards: {"repo_name", "path", "license", "content", "size"}. The rows
cycle through KINDS, so every rule of preprocessing.github sees files it keeps and files it
removes in known numbers; `sample_rows` says what should become of each row.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Iterator
from pathlib import Path

ROWS_PER_SHARD = 10_000
OWNERS = ("octo", "acme", "lindqvist", "nakamura", "okafor", "dubois", "garcia", "ivanova",
          "chen", "kowalski", "mueller", "patel")
PROJECTS = ("parser", "toolkit", "webapp", "cli", "engine", "utils", "server", "sdk", "bot",
            "compiler", "dashboard", "runtime")
WORDS = ("value", "count", "index", "buffer", "name", "result", "config", "item", "node", "path",
         "size", "total", "cache", "entry", "token", "state", "offset", "limit", "user", "data")
HOLDERS = ("The Authors", "Acme Corp.", "Jane Doe", "Example Foundation", "Open Source Team")

# What should become of each kind of row: "kept" or a drop reason of preprocessing.github.
KINDS = (
    ("python", "kept"),
    ("python_mit_header", "kept"),
    ("c_bsd_header", "kept"),
    ("js_apache_header", "kept"),
    ("markdown", "kept"),
    ("gpl_c", "license_gpl_3_0"),
    ("json_config", "extension"),
    ("header_only_init", "empty"),
    ("minified_js", "max_line_length"),
    ("long_lines", "mean_line_length"),
    ("ascii_table", "alphanumeric_fraction"),
    ("number_table", "alpha_token_ratio"),
    ("vendored_copy", "duplicate_content"),
)


def _name(rng: random.Random) -> str:
  return "_".join(rng.sample(WORDS, rng.randint(1, 3)))


def _python(rng: random.Random) -> str:
  parts = ["import os\nimport sys\n"]
  for _ in range(rng.randint(2, 5)):
    fn, arg, var = _name(rng), _name(rng), _name(rng)
    parts.append(f"\n\ndef {fn}({arg}, limit={rng.randint(1, 99)}):\n"
                 f'  """Returns the {var} for {arg}."""\n'
                 f"  {var} = []\n"
                 f"  for item in {arg}:\n"
                 f"    if len({var}) >= limit:\n"
                 f"      break\n"
                 f"    {var}.append(item * {rng.randint(2, 9)})\n"
                 f"  return {var}\n")
  return "".join(parts)


def _c(rng: random.Random) -> str:
  parts = ["#include <stdio.h>\n#include <stdlib.h>\n"]
  for _ in range(rng.randint(2, 4)):
    fn, var = _name(rng), _name(rng)
    parts.append(f"\nstatic int {fn}(const int *{var}, size_t n) {{\n"
                 f"  int total = 0;\n"
                 f"  for (size_t i = 0; i < n; ++i) {{\n"
                 f"    total += {var}[i] % {rng.randint(2, 97)};\n"
                 f"  }}\n"
                 f"  return total;\n}}\n")
  return "".join(parts)


def _js(rng: random.Random) -> str:
  parts = ["'use strict';\n\nconst path = require('path');\n"]
  for _ in range(rng.randint(2, 4)):
    fn, var, field = _name(rng), _name(rng), rng.choice(WORDS)
    parts.append(f"\nfunction {fn}({var}) {{\n"
                 f"  if (!{var}) {{\n    return null;\n  }}\n"
                 f"  return {var}.map((entry) => entry.{field} + {rng.randint(1, 9)});\n"
                 f"}}\n")
  parts.append("\nmodule.exports = { path };\n")
  return "".join(parts)


def _markdown(rng: random.Random, project: str) -> str:
  steps = "\n".join(f"{i}. Set the `{_name(rng)}` option before you run the {rng.choice(WORDS)} "
                    f"step." for i in range(1, rng.randint(3, 6)))
  return (f"# {project}\n\nA small {rng.choice(PROJECTS)} that reads the {rng.choice(WORDS)} "
          f"and writes the {rng.choice(WORDS)}.\n\n## Usage\n\n{steps}\n")


def _mit_header(rng: random.Random, comment: str) -> str:
  lines = [f"Copyright (c) {rng.randint(2008, 2022)} {rng.choice(HOLDERS)}", "",
           "Permission is hereby granted, free of charge, to any person obtaining a copy",
           "of this software and associated documentation files (the \"Software\"), to deal",
           "in the Software without restriction, subject to the following conditions."]
  return "".join(f"{comment} {line}".rstrip() + "\n" for line in lines) + "\n"


def _bsd_header(rng: random.Random) -> str:
  return (f"/*\n * Copyright (c) {rng.randint(2008, 2022)}, {rng.choice(HOLDERS)}\n"
          " * All rights reserved.\n *\n * SPDX-License-Identifier: BSD-3-Clause\n */\n\n")


def _apache_header(rng: random.Random) -> str:
  return (f"// Copyright {rng.randint(2008, 2022)} {rng.choice(HOLDERS)}\n//\n"
          "// Licensed under the Apache License, Version 2.0 (the \"License\");\n"
          "// you may not use this file except in compliance with the License.\n\n")


def _gpl_header(rng: random.Random) -> str:
  return (f"/* Copyright (C) {rng.randint(2000, 2022)} {rng.choice(HOLDERS)}\n"
          " * This program is free software: you can redistribute it and/or modify it under\n"
          " * the terms of the GNU General Public License version 3. */\n\n")


def _content(rng: random.Random, kind: str, project: str) -> tuple[str, str, str]:
  """(path, license, content) of a file of `kind`."""
  if kind == "python":
    return f"{project}/{_name(rng)}.py", rng.choice(("mit", "MIT", "bsd-2-clause")), _python(rng)
  if kind == "python_mit_header":
    return f"src/{_name(rng)}.py", "mit", _mit_header(rng, "#") + _python(rng)
  if kind == "c_bsd_header":
    return f"src/{_name(rng)}.c", "bsd-3-clause", _bsd_header(rng) + _c(rng)
  if kind == "js_apache_header":
    return f"lib/{_name(rng)}.js", "apache-2.0", _apache_header(rng) + _js(rng)
  if kind == "markdown":
    return "README.md", "Apache-2.0", _markdown(rng, project)
  if kind == "gpl_c":
    return f"src/{_name(rng)}.c", "gpl-3.0", _gpl_header(rng) + _c(rng)
  if kind == "json_config":
    config = {w: rng.randint(0, 100) for w in rng.sample(WORDS, 5)}
    return "package.json", "mit", json.dumps({"name": project, "config": config}, indent=2)
  if kind == "header_only_init":
    return f"{project}/__init__.py", "apache-2.0", _mit_header(rng, "#")
  if kind == "minified_js":
    body = ";".join(f"var {_name(rng)}=function(a){{return a+{rng.randint(1, 99)}}}"
                    for _ in range(80))
    return f"dist/{project}.min.js", "mit", body + "\n"
  if kind == "long_lines":
    lines = [f"MESSAGE_{i} = \"" + " ".join(rng.choices(WORDS, k=30)) + "\"" for i in range(8)]
    return f"{project}/messages.py", "bsd-2-clause", "\n".join(lines) + "\n"
  if kind == "ascii_table":
    rows = ["+--------+--------+--------+"] + [
        f"| {rng.randint(0, 9)}      | {rng.choice('xyz')}      |        |\n"
        "+--------+--------+--------+" for _ in range(6)]
    return "docs/table.md", "mit", "\n".join(rows) + "\n"
  if kind == "number_table":
    rows = [", ".join(str(rng.randint(0, 65535)) for _ in range(10)) + "," for _ in range(12)]
    return f"{project}/table.py", "mit", "TABLE = [\n" + "\n".join(rows) + "\n]\n"
  raise ValueError(f"unknown kind {kind}")


def sample_rows(count: int, seed: int = 0) -> Iterator[tuple[dict, str]]:
  """`count` exported rows, each with what should become of it ("kept" or a drop reason)."""
  rng = random.Random(seed)
  original = None
  for index in range(count):
    kind, outcome = KINDS[index % len(KINDS)]
    if kind == "vendored_copy":
      # The last plain Python file committed again to a mirror; "vendor-" sorts after every owner,
      # so the copy has the larger id and is the one dedup removes.
      row = {**original, "repo_name": f"vendor-mirror{index}/{original['repo_name'].split('/')[1]}"}
      yield row, outcome
      continue
    repo = f"{rng.choice(OWNERS)}{index}/{rng.choice(PROJECTS)}"
    path, license_name, content = _content(rng, kind, repo.split("/")[1])
    row = {"repo_name": repo, "path": path, "license": license_name, "content": content,
           "size": len(content.encode("utf-8"))}
    if kind == "python":
      original = row
    yield row, outcome


def write_sample_input(directory: Path, count: int, seed: int = 0) -> str:
  """Writes `count` rows as gzipped JSONL shards under `directory`; returns the --input glob."""
  directory.mkdir(parents=True, exist_ok=True)
  shard, out = -1, None
  try:
    for index, (row, _) in enumerate(sample_rows(count, seed)):
      if index % ROWS_PER_SHARD == 0:
        if out is not None:
          out.close()
        shard += 1
        out = gzip.open(directory / f"github-{shard:05d}.jsonl.gz", "wt", encoding="utf-8")
      out.write(json.dumps(row) + "\n")
  finally:
    if out is not None:
      out.close()
  return str(directory / "github-*.jsonl.gz")
