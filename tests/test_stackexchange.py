"""Stack Exchange rules one by one, the dump reader on broken input, the pipeline end to end."""

import io
import logging
from argparse import Namespace
from pathlib import Path

import pytest
from conftest import written_documents

from preprocessing import run, stackexchange
from preprocessing.document import Document, Drop
from preprocessing.stackexchange import Post
from preprocessing.testing import synthetic_stackexchange as synthetic

row = synthetic.row


def _post(post_id, score, post_type=2, parent_id=1):
  return Post(site="s", id=post_id, type=post_type, parent_id=parent_id, score=score, title="",
              body="", tags=(), created="", accepted_answer_id=None)


@pytest.mark.parametrize("body, text", [
    ("<p>Hello &amp; <b>bold</b>\n   world</p><p>Next</p>", "Hello & bold world\nNext"),
    ("<pre><code>if a &lt; b:\n    return 1\n\nx = 2\n</code></pre>",
     "if a < b:\n    return 1\n\nx = 2"),
    ("<p>Use <code>ls -l</code> here.</p>", "Use ls -l here."),
    ("<ul>\n<li>one</li>\n<li>two</li>\n</ul>", "- one\n- two"),
    ("line<br>break<br/>again", "line\nbreak\nagain"),
    ("<blockquote><p>quoted</p></blockquote><hr/><h2>Title</h2>", "quoted\nTitle"),
    ("<p>&#39;quotes&#39; &quot;x&quot; &eacute;</p>", "'quotes' \"x\" é"),
    ("<p> </p>", ""),
    # A list item's first block goes on the "- " line, as the HTML shows it.
    ("<p>Issues:</p>\n<ul>\n<li>\n<p>A build script.</p>\n</li>\n<li>\n<p>Two builds.</p>\n"
     "</li>\n</ul>\n<p>After.</p>", "Issues:\n- A build script.\n- Two builds.\nAfter."),
    ("<ol><li><p>first</p><p>second paragraph</p></li><li> spaced </li></ol>",
     "- first\nsecond paragraph\n- spaced"),
    ("<ul><li><br>after br</li><li><div><p>nested blocks</p></div></li></ul>",
     "- after br\n- nested blocks"),
    ("<ul><li><pre><code>\nlet x = 1;\n  y\n</code></pre></li></ul>", "- let x = 1;\n  y"),
    # Items without text leave no lone "-".
    ("<ul><li></li><li><p> </p></li><li><p></p><p>text</p></li></ul>", "- text"),
    # Paragraphs are one line each; a blank line is left to separate posts (format_document),
    # blank lines in code stay.
    ("<p>One.</p>\n\n<p>Two.</p><pre>a\n\nb</pre><p>Three.</p>", "One.\nTwo.\na\n\nb\nThree."),
])
def test_html_to_text(body, text):
  assert stackexchange.html_to_text(body) == text


def test_list_of_paragraphs_in_the_mini_corpus(caplog):
  """The real Cargo FAQ answer "Why is Cargo rebuilding my code?" has `<li>\\n<p>` items."""
  path = Path(__file__).parent.parent / "examples/mini_corpus/stackexchange/cargo-faq/Posts.xml"
  posts = {post.id: post for post in _read(path.read_bytes(), caplog)}
  assert posts[23].title == "Why is Cargo rebuilding my code?"
  text = stackexchange.html_to_text(posts[24].body)
  assert ("can cause crates to get rebuilt are:\n"
          "- A build script prints cargo::rerun-if-changed=foo where foo is a file") in text
  assert "\n- Two successive Cargo builds may differ" in text
  assert not any(line.strip() == "-" for line in text.split("\n"))
  document = stackexchange.format_document(posts[23].title, "", [text])
  assert document.startswith("Q: Why is Cargo rebuilding my code?\n\nA: Cargo is responsible")
  assert "\n\n" not in document.split("\n\n", 1)[1]  # one blank line: between the posts


def test_answers_sort_by_number_not_string():
  answers = [_post(3, 9), _post(5, 10), _post(4, 10), _post(6, -1), _post(7, 100)]
  assert [a.id for a in stackexchange.sort_answers(answers)] == [7, 4, 5, 3, 6]


def test_format_document():
  assert stackexchange.format_document("Why?", "Body\nmore", ["First", "Second"]) == (
      "Q: Why?\nBody\nmore\n\nA: First\n\nA: Second")
  assert stackexchange.format_document("Why?", "", []) == "Q: Why?"
  assert stackexchange.format_document(" ", "", []) == ""


@pytest.mark.parametrize("name, host", [
    ("math", "math.stackexchange.com"), ("math.stackexchange.com", "math.stackexchange.com"),
    ("stackoverflow.com-Posts", "stackoverflow.com"), ("MathOverflow.net", "mathoverflow.net"),
])
def test_site_host(name, host):
  assert stackexchange.site_host(name) == host


def test_parse_tags_old_and_new_dump_formats():
  assert stackexchange.parse_tags("<python><list>") == ("python", "list")
  assert stackexchange.parse_tags("|python|list|") == ("python", "list")
  assert stackexchange.parse_tags("") == ()


def test_parse_row():
  post = stackexchange.parse_row({"Id": "7", "PostTypeId": "2", "ParentId": "3", "Score": "-4",
                                  "Body": "<p>x</p>"}, "s")
  assert (post.id, post.type, post.parent_id, post.score, post.body) == (7, 2, 3, -4, "<p>x</p>")
  assert stackexchange.parse_row({"PostTypeId": "1"}, "s") is None
  assert stackexchange.parse_row({"Id": "x", "PostTypeId": "1"}, "s") is None


def test_parse_sites():
  assert stackexchange.parse_sites("largest:28") == ("largest", 28)
  assert stackexchange.parse_sites("all") == ("all", None)
  assert stackexchange.parse_sites("math, superuser.com") == (
      "list", frozenset({"math.stackexchange.com", "superuser.com"}))
  for bad in ("largest:0", "largest:x", " , "):
    with pytest.raises(ValueError, match="--stackexchange_sites"):
      stackexchange.parse_sites(bad)


def test_largest_sites_ties_go_alphabetically():
  sizes = [("b", 5), ("a", 5), ("c", 9), ("d", 1)]
  assert stackexchange.largest_sites(sizes, 2) == {"c", "a"}
  assert stackexchange.largest_sites(sizes, 10) == {"a", "b", "c", "d"}


def test_keep_site():
  assert list(stackexchange.keep_site(_post(1, 0), {"s"})) == [_post(1, 0)]
  assert list(stackexchange.keep_site(_post(1, 0), {"t"})) == []


def test_min_answers_and_non_empty():
  doc = Document(id="s/1", source="stackexchange", text="Q: x", metadata={"answer_count": 0})
  assert stackexchange.min_answers(doc, 0) is doc
  assert stackexchange.min_answers(doc, 1) == Drop("no_answers")
  assert stackexchange.non_empty(doc) is doc
  empty = Document(id="s/2", source="stackexchange", text=" ", metadata={"answer_count": 0})
  assert stackexchange.non_empty(empty) == Drop("empty")


def _xml(rows, end="</posts>\n"):
  return ('<?xml version="1.0" encoding="utf-8"?>\n<posts>\n' + "".join(rows) + end).encode()


def _read(data, caplog):
  with caplog.at_level(logging.WARNING):
    return list(stackexchange.read_posts(io.BytesIO(data), "dump/math/Posts.xml"))


def test_read_posts_keeps_rows_before_broken_xml(caplog):
  data = _xml([row(Id=1, PostTypeId=1, Title="T", Body="<p>a</p>"),
               row(Id=2, PostTypeId=2, ParentId=1, Body="b"),
               row(Id=3, PostTypeId=5, Body="wiki"),
               row(Id=4, PostTypeId=2, Body="no parent"),
               row(PostTypeId=1, Body="no id")], end='  <row Id="9" PostTy')
  posts = _read(data, caplog)
  assert [(p.site, p.id, p.type) for p in posts] == [
      ("math.stackexchange.com", 1, 1), ("math.stackexchange.com", 2, 2)]
  assert caplog.text.count("malformed input (bad_post_row)") == 2
  assert "malformed input (bad_xml)" in caplog.text


@pytest.mark.parametrize("data", [b"", b"\xff\xfe<posts>", _xml([]).replace(b"<posts>", b"<posts")])
def test_read_posts_broken_files(data, caplog):
  assert _read(data, caplog) == []
  assert "malformed input (bad_xml)" in caplog.text


def test_read_posts_invalid_utf8_keeps_earlier_rows(caplog):
  data = _xml([row(Id=1, PostTypeId=1, Title="T", Body="a")]).replace(
      b"</posts>", b'<row Id="2" PostTypeId="1" Body="\xff" /></posts>')
  assert [p.id for p in _read(data, caplog)] == [1]
  assert "malformed input (bad_xml)" in caplog.text


@pytest.fixture
def dump(tmp_path):
  math = [row(Id=1, PostTypeId=1, Score=5, Title="How to add?", Tags="<algebra><sums>",
              AcceptedAnswerId=3, CreationDate="2020-01-02T03:04:05.678",
              Body="<p>What is <code>1 + 1</code>?</p>"),
          row(Id=3, PostTypeId=2, ParentId=1, Score=9, Body="<p>Nine.</p>"),
          row(Id=4, PostTypeId=2, ParentId=1, Score=10, Body="<p>Ten &amp; first.</p>"),
          row(Id=5, PostTypeId=2, ParentId=1, Score=10, Body="<pre><code>a\n  b\n</code></pre>"),
          row(Id=2, PostTypeId=1, Score=0, Title="Unanswered?", Body="<p>Nobody knows.</p>"),
          row(Id=8, PostTypeId=2, ParentId=2, Score=3, Body="<p>  </p>"),
          row(Id=6, PostTypeId=1, Score=0, Title="", Body=""),
          row(Id=7, PostTypeId=2, ParentId=99, Score=1, Body="<p>Orphan.</p>"),
          row(Id=10, PostTypeId=4, Body="<p>Tag wiki.</p>")]
  synthetic.write_posts(tmp_path / "dump" / "math.stackexchange.com" / "Posts.xml", math)
  cooking = _xml([row(Id=1, PostTypeId=1, Score=2, Title="Salt?", Body="<p>How much?</p>"),
                  row(Id=2, PostTypeId=2, ParentId=1, Score=1, Body="<p>A pinch.</p>")],
                 end='  <row Id="3" PostTypeId="2" Par')
  (tmp_path / "dump" / "cooking").mkdir()
  (tmp_path / "dump" / "cooking" / "Posts.xml").write_bytes(cooking)
  synthetic.write_posts(tmp_path / "dump" / "tiny.stackexchange.com" / "Posts.xml",
                        [row(Id=1, PostTypeId=1, Title="Alone?", Body="<p>Yes.</p>")])
  return tmp_path / "dump" / "*" / "Posts.xml"


def test_end_to_end_keeps_the_largest_sites(tmp_path, dump):
  stats = run.main(["--source=stackexchange", f"--input={dump}", f"--output={tmp_path / 'out'}",
                    "--stackexchange_sites=largest:2"])
  docs = written_documents(tmp_path / "out")
  assert sorted(docs) == ["cooking.stackexchange.com/1", "math.stackexchange.com/1",
                          "math.stackexchange.com/2"]
  first = docs["math.stackexchange.com/1"]
  assert first.text == ("Q: How to add?\nWhat is 1 + 1?\n\nA: Ten & first.\n\nA: a\n  b\n\n"
                        "A: Nine.")
  assert first.metadata == {
      "site": "math.stackexchange.com", "question_id": 1, "score": 5, "title": "How to add?",
      "url": "https://math.stackexchange.com/questions/1", "tags": ["algebra", "sums"],
      "answer_count": 3, "created": "2020-01-02T03:04:05.678", "accepted_answer_id": 3}
  assert docs["math.stackexchange.com/2"].text == "Q: Unanswered?\nNobody knows."
  assert docs["cooking.stackexchange.com/1"].text == "Q: Salt?\nHow much?\n\nA: A pinch."
  assert stats["posts_read"] == 12
  assert stats["documents_read"] == 4 and stats["documents_written"] == 3
  assert stats["dropped"] == {"empty": 1, "empty_answer": 1, "orphan_answer": 1,
                              "other_post_type": 1, "site_not_selected": 1}
  assert stats["malformed"] == {"bad_xml": 1}


def test_end_to_end_site_list_and_min_answers(tmp_path, dump):
  stats = run.main(["--source=stackexchange", f"--input={dump}", f"--output={tmp_path / 'out'}",
                    "--stackexchange_sites=math,tiny", "--stackexchange_min_answers=1"])
  assert sorted(written_documents(tmp_path / "out")) == ["math.stackexchange.com/1"]
  assert stats["dropped"] == {"empty_answer": 1, "no_answers": 3, "orphan_answer": 1,
                              "other_post_type": 1, "site_not_selected": 2}


def test_synthetic_sample_runs(tmp_path):
  glob = synthetic.write_sample_input(tmp_path / "a", 30, seed=3)
  synthetic.write_sample_input(tmp_path / "b", 30, seed=3)
  for site in synthetic.SITES:
    assert ((tmp_path / "a" / site / "Posts.xml").read_bytes()
            == (tmp_path / "b" / site / "Posts.xml").read_bytes())
  stats = run.main(["--source=stackexchange", f"--input={glob}", f"--output={tmp_path / 'out'}",
                    "--stackexchange_sites=all"])
  assert stats["documents_read"] == 30 and stats["malformed"] == {}
  assert stats["documents_written"] == 30 - stats["dropped"].get("empty", 0) > 20
  assert stats["dropped"]["orphan_answer"] == 3


def test_check_arguments():
  good = Namespace(stackexchange_sites="largest:28", stackexchange_min_answers=0)
  assert stackexchange.check_arguments(good) == []
  bad = Namespace(stackexchange_sites="largest:-1", stackexchange_min_answers=-1)
  problems = stackexchange.check_arguments(bad)
  assert len(problems) == 2
  assert "--stackexchange_sites" in problems[0] and "--stackexchange_min_answers" in problems[1]
