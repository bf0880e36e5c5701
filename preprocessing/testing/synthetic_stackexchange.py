"""Synthetic Stack Exchange dump (seeded): one `<site>/Posts.xml` per site in the dump's format.

Questions with HTML bodies (paragraphs, lists, <pre><code> blocks, entities), answers with scores
that sort differently as strings and as numbers (9 and 10), unanswered questions, orphan answers,
tag wiki rows (PostTypeId 4 and 5), empty questions and empty answers.
"""

from __future__ import annotations

import random
from pathlib import Path
from xml.sax.saxutils import quoteattr

from preprocessing.testing.synthetic_web import ENGLISH, _sentence

SITES = ("math.stackexchange.com", "superuser.com", "cooking.stackexchange.com")
TAGS = ("python", "linux", "algebra", "bread", "networking", "probability", "bash")


def _body(rng: random.Random) -> str:
  parts = [f"<p>{_sentence(rng, ENGLISH)} {_sentence(rng, ENGLISH)}</p>"]
  if rng.random() < 0.4:
    parts.append("<pre><code>for x in range(3):\n    print(x &lt; 2 &amp;&amp; True)\n"
                 "</code></pre>")
  if rng.random() < 0.3:
    parts.append("<ul>\n<li>" + "</li>\n<li>".join(_sentence(rng, ENGLISH) for _ in range(2))
                 + "</li>\n</ul>")
  parts.append("<p>See <a href=\"https://example.com\">this</a> &amp; <code>x</code>.</p>")
  return "\n".join(parts)


def row(**attributes) -> str:
  """One dump row; values are escaped as the dump escapes them (HTML inside an attribute)."""
  return "  <row " + " ".join(f"{k}={quoteattr(str(v))}" for k, v in attributes.items()) + " />\n"


def _site_rows(rng: random.Random, questions: int) -> list[str]:
  rows, next_id = [], 1
  for _ in range(questions):
    question_id, kind = next_id, rng.random()
    next_id += 1
    tags = "".join(f"<{t}>" for t in rng.sample(TAGS, 2))
    empty = kind < 0.03
    rows.append(row(Id=question_id, PostTypeId=1, Score=rng.randint(-2, 50),
                    CreationDate="2020-01-02T03:04:05.678",
                    Body="" if empty else _body(rng), Title="" if empty else
                    _sentence(rng, ENGLISH)[:-1] + "?", Tags=tags))
    answers = 0 if empty or kind < 0.15 else rng.randint(1, 4)
    for score in ([9, 10] if answers == 2 else [rng.randint(-3, 30) for _ in range(answers)]):
      rows.append(row(Id=next_id, PostTypeId=2, ParentId=question_id, Score=score,
                      CreationDate="2020-01-03T00:00:00.000",
                      Body="<p> </p>" if rng.random() < 0.03 else _body(rng)))
      next_id += 1
    if rng.random() < 0.05:
      rows.append(row(Id=next_id, PostTypeId=rng.choice((4, 5)), Score=0, Body=_body(rng)))
      next_id += 1
  rows.append(row(Id=next_id, PostTypeId=2, ParentId=10**9, Score=1, Body=_body(rng)))
  return rows


def write_posts(path: Path, rows: list[str]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with path.open("w", encoding="utf-8") as f:
    f.write('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n')
    f.writelines(rows)
    f.write("</posts>\n")


def write_sample_input(directory: Path, count: int, seed: int = 0) -> str:
  """About `count` questions over three sites (largest first), with their answers; a glob."""
  rng = random.Random(seed)
  directory = Path(directory)
  shares = (0.5, 0.3, 0.2)
  for site, share in zip(SITES, shares, strict=True):
    write_posts(directory / site / "Posts.xml", _site_rows(rng, max(1, round(count * share))))
  return str(directory / "*" / "Posts.xml")
