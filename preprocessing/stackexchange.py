"""`--source=stackexchange`: question-and-answer documents from the Stack Exchange data dump.

Input: the official dump, one `Posts.xml` per site (`dump/math.stackexchange.com/Posts.xml`,
`dump/math/Posts.xml`, or `dump/stackoverflow.com-Posts/Posts.xml`); the site is the directory's
name, made a host name (`math` -> `math.stackexchange.com`, a trailing `-Posts` removed). Each file
is streamed row by row with ElementTree's iterparse.

The paper keeps "the 28 largest websites, removed the HTML tags from text and sorted the answers by
score (from highest to lowest)". Steps:
  1. Rows that are neither questions (PostTypeId 1) nor answers (2) are dropped (`other_post_type`).
  2. Sites are selected by --stackexchange_sites: `largest:28` (default) keeps the 28 sites with
     the most questions plus answers in the input, RedPajama v1's measure of size, computed by the
     pipeline rather than taken from a fixed list (no list of the sizes in RedPajama's 2023 dump
     could be sourced, and the dump grows); `all`, or a comma-separated list of sites. Posts of
     other sites are dropped one by one (`site_not_selected`, counting questions and answers).
  3. Answers are joined to their question by (site, question id) with CoGroupByKey; answers whose
     question is absent are dropped (`orphan_answer`).
  4. HTML becomes plain text (`html_to_text`); answers with no text are left out
     (`empty_answer`).
  5. Answers are sorted by score as integers, highest first, ties by the older (smaller) answer id;
     RedPajama v1 compared the scores as strings, which puts "9" above "10".
  6. Questions with fewer than --stackexchange_min_answers answers are dropped (`no_answers`);
     the default 0 keeps unanswered questions, as RedPajama v1 did.
  7. Documents without any text are dropped (`empty`).

Document text (`format_document`): blocks separated by a blank line,
    Q: <title>
    <question text>

    A: <text of the best answer>

    A: <text of the next answer>
Inside a post (`html_to_text`) paragraphs, headings and other block elements are one line each,
separated by a single line break, so that outside code a blank line always starts the next post;
list items are lines `- <text>`; <pre> code keeps its own line breaks, blank lines included.
Drops before the join (1-3) count posts; later ones count documents. `posts_read` counts rows read.
Malformed input: `bad_xml` (broken or truncated XML, invalid UTF-8; the posts read before the error
are kept), `truncated_file` and `decompression_bomb` (a compressed Posts.xml that ends early or
expands past preprocessing.decompress's ratio limit; the posts before are kept), `bad_post_row` (a
row without a numeric Id or PostTypeId, or an answer without a numeric ParentId),
`duplicate_question_id`.
"""

from __future__ import annotations

import argparse
import functools
import html.parser
import posixpath
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io import fileio

from preprocessing import pipeline
from preprocessing.decompress import DAMAGE, damage_reason
from preprocessing.document import Document, Drop
from preprocessing.pipeline import ApplyFilters, count, report_malformed

QUESTION, ANSWER = 1, 2
DEFAULT_SITES = "largest:28"
_BLOCK_TAGS = frozenset({"p", "div", "pre", "blockquote", "ul", "ol", "li", "h1", "h2", "h3", "h4",
                         "h5", "h6", "table", "tr", "hr", "dl", "dt", "dd"})
_WHITESPACE = re.compile(r"\s+")
_LIST_MARKER = "- "


class Post(NamedTuple):
  site: str
  id: int
  type: int
  parent_id: int | None
  score: int
  title: str
  body: str
  tags: tuple[str, ...]
  created: str
  accepted_answer_id: int | None


def site_host(directory_name: str) -> str:
  """`math` -> `math.stackexchange.com`; names with a dot are hosts already."""
  name = directory_name.lower().removesuffix("-posts")
  return name if "." in name else f"{name}.stackexchange.com"


def parse_tags(tags: str) -> tuple[str, ...]:
  """Tags as the dump writes them, `<a><b>` (older dumps) or `|a|b|` (dumps since 2023)."""
  return tuple(t for t in re.split(r"[<>|]+", tags) if t)


def _int_or_none(value: str | None) -> int | None:
  try:
    return int(value) if value is not None else None
  except ValueError:
    return None


def parse_row(attrib: dict[str, str], site: str) -> Post | None:
  """A Post from a row's attributes; None if it lacks a numeric Id or PostTypeId."""
  post_id, post_type = _int_or_none(attrib.get("Id")), _int_or_none(attrib.get("PostTypeId"))
  if post_id is None or post_type is None:
    return None
  return Post(site=site, id=post_id, type=post_type,
              parent_id=_int_or_none(attrib.get("ParentId")),
              score=_int_or_none(attrib.get("Score")) or 0,
              title=attrib.get("Title", ""), body=attrib.get("Body", ""),
              tags=parse_tags(attrib.get("Tags", "")), created=attrib.get("CreationDate", ""),
              accepted_answer_id=_int_or_none(attrib.get("AcceptedAnswerId")))


def read_posts(stream, path: str) -> Iterable[Post]:
  """Questions and answers of one Posts.xml, streamed; other rows and errors are counted."""
  site = site_host(posixpath.basename(posixpath.dirname(path.replace("\\", "/"))))
  root = None
  try:
    for event, element in ET.iterparse(stream, events=("start", "end")):
      if root is None:
        root = element
      if event != "end" or element.tag != "row":
        continue
      count("posts_read")
      post = parse_row(element.attrib, site)
      if post is None or (post.type == ANSWER and post.parent_id is None):
        report_malformed("bad_post_row", f"{path}: row Id={element.get('Id')!r} "
                         f"PostTypeId={element.get('PostTypeId')!r}")
        post = None
      # Rows are independent: freeing each keeps memory flat on Stack Overflow's 100 GB file.
      element.clear()
      root.clear()
      if post is None:
        continue
      if post.type not in (QUESTION, ANSWER):
        count("dropped/other_post_type")
      else:
        yield post
  except ET.ParseError as error:
    report_malformed("bad_xml", f"{path}: {error}")


def _read_posts_file(readable: fileio.ReadableFile) -> Iterable[Post]:
  try:
    with pipeline.open_input(readable) as stream:
      yield from read_posts(stream, readable.metadata.path)
  except DAMAGE as error:  # the posts before the cut or the bomb are kept
    report_malformed(damage_reason(error), f"{readable.metadata.path}: {error}")
  if pipeline.progress_bar is not None:
    pipeline.progress_bar.update(readable.metadata.size_in_bytes)


class _TextExtractor(html.parser.HTMLParser):
  """Text of a post body, one line per block element (see `html_to_text`)."""

  def __init__(self):
    super().__init__(convert_charrefs=True)
    self.parts: list[str] = []
    self.pre_depth = 0
    # The current line holds only a list item's "- ": the item's first block (`<li><p>`)
    # and its text go on this line, not on the next.
    self.after_marker = False

  def _append(self, text: str):
    self.parts.append(text)
    self.after_marker = False

  def _at_line_start(self) -> bool:
    return not self.parts or self.parts[-1].endswith("\n") or self.after_marker

  def _end_line(self):
    if self.parts and not self.parts[-1].endswith("\n"):
      self._append("\n")

  def handle_starttag(self, tag, attrs):
    if tag == "br":
      if not self.after_marker:  # `<li><br>text`: the text stays on the marker's line
        self._append("\n")
    elif tag in _BLOCK_TAGS:
      if not self._at_line_start():
        self._append("\n")
      if tag == "li":
        self._append(_LIST_MARKER)
        self.after_marker = True
      if tag == "pre":
        self.pre_depth += 1

  def handle_startendtag(self, tag, attrs):
    self.handle_starttag(tag, attrs)

  def handle_endtag(self, tag):
    if tag in _BLOCK_TAGS:
      if tag == "pre":
        self.pre_depth = max(0, self.pre_depth - 1)
      if not self.after_marker:
        self._end_line()
      elif tag == "li":  # an item without text: no lone "-"
        self.parts.pop()
        self.after_marker = False
      # else an empty block at the start of an item (`<li><p></p>`): the marker waits for text

  def handle_data(self, data):
    if self.pre_depth:
      if self.after_marker:  # `<li><pre>\ncode`: the code starts on the marker's line
        data = data.lstrip("\n")
      if data:
        self._append(data)
      return
    # Outside <pre>, HTML whitespace is layout only; line breaks come from the tags.
    text = _WHITESPACE.sub(" ", data)
    if self._at_line_start():
      text = text.lstrip()
    if text:
      self._append(text)


def html_to_text(body: str) -> str:
  """Plain text of a post body: tags removed, entities unescaped, one line per block element
  (paragraphs, headings, list items, ... are separated by a single line break; a blank line in
  a document separates posts, see `format_document`), list items prefixed "- " with their first
  block on the marker's line (`<li><p>text</p></li>` -> `- text`), and <pre> (code) blocks kept
  with their line breaks and indentation."""
  extractor = _TextExtractor()
  extractor.feed(body)
  extractor.close()
  lines = "".join(extractor.parts).split("\n")
  return "\n".join(line.rstrip() for line in lines).strip("\n")


def sort_answers(answers: Iterable[Post]) -> list[Post]:
  """Highest score first, as integers; equal scores keep the older (smaller id) answer first."""
  return sorted(answers, key=lambda answer: (-answer.score, answer.id))


def format_document(title: str, question: str, answers: list[str]) -> str:
  """`Q: title\\nquestion`, then `A: answer` per answer, blocks separated by a blank line; empty
  when there is no text at all."""
  if not (title.strip() or question.strip() or any(a.strip() for a in answers)):
    return ""
  head = f"Q: {title.strip()}\n{question}".rstrip()
  return "\n\n".join([head, *(f"A: {answer}" for answer in answers)])


def question_url(site: str, question_id: int) -> str:
  return f"https://{site}/questions/{question_id}"


def assemble(key_and_groups) -> Iterable[Document]:
  """The document of one question from its CoGroupByKey group; orphan answers are counted."""
  (site, question_id), groups = key_and_groups
  questions, answers = list(groups["question"]), list(groups["answers"])
  if not questions:
    count("dropped/orphan_answer", len(answers))
    return
  for _ in questions[1:]:
    report_malformed("duplicate_question_id", question_url(site, question_id))
  question = questions[0]
  answer_texts = []
  for answer in sort_answers(answers):
    text = html_to_text(answer.body)
    if text.strip():
      answer_texts.append(text)
    else:
      count("dropped/empty_answer")
  url = question_url(site, question_id)
  count("documents_read")
  yield Document(
      id=f"{site}/{question_id}", source="stackexchange",
      text=format_document(question.title, html_to_text(question.body), answer_texts),
      metadata={"site": site, "question_id": question_id, "url": url,
                "title": question.title, "score": question.score, "tags": list(question.tags),
                "answer_count": len(answer_texts), "created": question.created,
                "accepted_answer_id": question.accepted_answer_id})


def min_answers(doc: Document, minimum: int) -> Document | Drop:
  return doc if doc.metadata["answer_count"] >= minimum else Drop("no_answers")


def non_empty(doc: Document) -> Document | Drop:
  return doc if doc.text.strip() else Drop("empty")


def parse_sites(value: str) -> tuple[str, object]:
  """--stackexchange_sites as ("largest", N), ("all", None) or ("list", frozenset of hosts)."""
  value = value.strip()
  if value == "all":
    return "all", None
  if value.startswith("largest:"):
    number = value.removeprefix("largest:")
    if not number.isdigit() or int(number) < 1:
      raise ValueError(f"--stackexchange_sites={value}: largest:N needs a positive integer N")
    return "largest", int(number)
  sites = frozenset(site_host(s.strip()) for s in value.split(",") if s.strip())
  if not sites:
    raise ValueError(f"--stackexchange_sites={value}: give largest:N, all, or a list of sites")
  return "list", sites


def keep_site(post: Post, sites: Iterable[str]) -> Iterable[Post]:
  if post.site in sites:
    yield post
  else:
    count("dropped/site_not_selected")


def largest_sites(site_sizes: Iterable[tuple[str, int]], number: int) -> frozenset[str]:
  """The `number` sites with the most posts; equal sizes go to the alphabetically first."""
  ranked = sorted(site_sizes, key=lambda item: (-item[1], item[0]))
  return frozenset(site for site, _ in ranked[:number])


class SelectSites(beam.PTransform):
  """Posts of the chosen sites (module docstring, step 2); the others are counted and dropped."""

  def __init__(self, sites: str):
    super().__init__()
    self.mode, self.value = parse_sites(sites)

  def expand(self, posts):
    if self.mode == "all":
      return posts
    if self.mode == "list":
      return posts | "KeepListed" >> beam.FlatMap(keep_site, self.value)
    selection = (posts
                 | "SiteOfPost" >> beam.Map(lambda post: (post.site, 1))
                 | "SiteSizes" >> beam.CombinePerKey(sum)
                 | "AllSizes" >> beam.combiners.ToList()
                 | "Largest" >> beam.Map(largest_sites, self.value))
    return posts | "KeepLargest" >> beam.FlatMap(
        keep_site, beam.pvalue.AsSingleton(selection))


def _question_key(post: Post):
  return (post.site, post.id), post


def _answer_key(post: Post):
  return (post.site, post.parent_id), post


class JoinAnswers(beam.PTransform):
  """Posts -> one Document per question, answers joined by (site, question id)."""

  def expand(self, posts):
    questions = (posts
                 | "Questions" >> beam.Filter(lambda post: post.type == QUESTION)
                 | "KeyQuestions" >> beam.Map(_question_key))
    answers = (posts
               | "Answers" >> beam.Filter(lambda post: post.type == ANSWER)
               | "KeyAnswers" >> beam.Map(_answer_key))
    return ({"question": questions, "answers": answers}
            | "JoinByQuestion" >> beam.CoGroupByKey()
            | "Assemble" >> beam.FlatMap(assemble))


def add_arguments(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group("stackexchange")
  group.add_argument(
      "--stackexchange_sites", default=DEFAULT_SITES,
      help="sites to keep: largest:N (the N sites with the most questions and answers in the "
           "input, RedPajama v1's measure; the paper keeps 28), all, or a comma-separated list "
           "such as math.stackexchange.com,superuser.com (default: %(default)s)")
  group.add_argument(
      "--stackexchange_min_answers", type=int, default=0,
      help="drop questions with fewer answers (default 0 keeps unanswered questions, as "
           "RedPajama v1)")


def check_arguments(args: argparse.Namespace) -> list[str]:
  problems = []
  try:
    parse_sites(args.stackexchange_sites)
  except ValueError as error:
    problems.append(str(error))
  if args.stackexchange_min_answers < 0:
    problems.append(f"--stackexchange_min_answers={args.stackexchange_min_answers}: "
                    "must be 0 or more")
  return problems


def build(root: beam.Pipeline, args: argparse.Namespace) -> beam.PCollection:
  return (root
          | "ReadPosts" >> pipeline.ReadFiles(args.input, _read_posts_file)
          | "SelectSites" >> SelectSites(args.stackexchange_sites)
          | "JoinAnswers" >> JoinAnswers()
          | "Filters" >> beam.ParDo(ApplyFilters([
              functools.partial(min_answers, minimum=args.stackexchange_min_answers),
              non_empty])))
