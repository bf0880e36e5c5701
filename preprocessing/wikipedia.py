"""`--source=wikipedia`: MediaWiki XML dumps (`*-pages-articles.xml[.bz2]`) as plain-text articles.

The dump is streamed page by page (export format 0.10 / 0.11, any namespace URI); the language is
the siteinfo `dbname` without its `wiki` suffix (`dewiki` -> `de`). Each page becomes a Document
with the raw wikitext, then, in order:
  1. pages of a wiki outside --wikipedia_languages are dropped   (`language_<lang>`, or
     `language_unknown` when the dbname is not `<lang>wiki`); every page is counted, so stats
     show how much of such a dump was skipped
  2. pages outside the article namespace are dropped              (`namespace_<n>`)
  3. redirects are dropped                                        (`redirect`)
  4. the wikitext becomes plain text (`wikitext_to_text`)
  5. pages with no text left are dropped                          (`empty_after_cleaning`)

Plain text, as the paper says ("remove hyperlinks, comments and other formatting boilerplate"):
links keep their visible text, templates, comments, tables, references, math and other
non-prose tags go, file/image/category links and interlanguage links go (they render outside the
text), external links keep their label, headings stay as lines, list markers and bold/italic
quotes go, HTML tags keep their text. The file and category prefixes are the English ones plus
the dump's own names for namespaces 6, 14 and -2 from siteinfo; localised aliases that siteinfo
does not list (German `Bild:`) are not known.

After rendering, the prose is cleaned of what template removal leaves behind: the braces of
unbalanced templates with what they enclose (`{{broken ... }}`, a lone `{{` or `}}`), behaviour
switches (`__NOTOC__`), and empty brackets (`()`, `( ; )`) that stood around removed templates,
as in `Paris ({{IPA-fr|paʁi}}) is` -> `Paris is`; empty brackets right after a word, `!`, `>`,
`]` or `)` are a call in code written as prose (`the main() function`) and stay.
Code is left alone: the text of <code>, <tt>, <kbd>, <samp> (CODE_TAGS: their wikitext is still
rendered, so a template inside <code> goes as anywhere) and of <nowiki> and <pre> (VERBATIM_TAGS:
not parsed as wikitext at all) keeps its brackets, braces and underscores (`size_of::<u32>()`,
the unit type `()`, a literal `{{`, `__FILE__`); a <pre> block also keeps its line breaks and
indentation and stands on lines of its own. Code blocks in <syntaxhighlight>/<source> are
dropped with the other non-prose tags. Lines that MediaWiki preformats because they begin with a
space are not told apart from prose.

Malformed input (reported, never fatal): `broken_xml` (truncated or ill-formed XML: the pages
read before the break are kept), `truncated_file` (a .bz2 / .gz that ends early) and
`decompression_bomb` (one that expands past preprocessing.decompress's ratio limit), the pages
before either kept; `broken_archive` (compressed data that does not decompress),
`page_missing_fields` (a page without title, id or a numeric ns).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from urllib.parse import quote

import apache_beam as beam
import mwparserfromhell
from apache_beam.io import fileio
from mwparserfromhell import nodes

from preprocessing import pipeline
from preprocessing.decompress import DAMAGE, damage_reason
from preprocessing.document import Document, Drop
from preprocessing.pipeline import ApplyFilters, ReadFiles, count, report_malformed

SOURCE = "wikipedia"
# Paper 2.1: the June-August 2022 dumps of 20 languages in Latin or Cyrillic script.
DEFAULT_LANGUAGES = ("bg", "ca", "cs", "da", "de", "en", "es", "fr", "hr", "hu", "it", "nl", "pl",
                     "pt", "ro", "ru", "sl", "sr", "sv", "uk")
ARTICLE_NAMESPACE = 0
# Media (-2), File (6), Category (14): links to these render outside the running text.
HIDDEN_LINK_NAMESPACES = ("-2", "6", "14")
ENGLISH_HIDDEN_PREFIXES = ("media", "file", "image", "category")
# Tags whose content is not prose; the rest keep their text.
DROPPED_TAGS = frozenset({
    "ref", "references", "table", "gallery", "math", "chem", "ce", "score", "timeline",
    "imagemap", "graph", "mapframe", "maplink", "templatedata", "templatestyles", "syntaxhighlight",
    "source", "hiero", "inputbox", "categorytree", "indicator", "section", "style", "script"})
LINE_BREAK_TAGS = frozenset({"p", "li", "dd", "dt", "tr", "pre"})
# Tags whose text is code: rendered like any wikitext, then kept out of the prose cleanup.
CODE_TAGS = frozenset({"code", "tt", "kbd", "samp"})
# Tags whose content mwparserfromhell keeps as plain text (no links, no templates): verbatim.
VERBATIM_TAGS = frozenset({"nowiki", "pre"})

_INTERLANGUAGE_PREFIX = re.compile(r"[a-z]{2,3}(-[a-z]+)*")
_LEFTOVER_TEMPLATE = re.compile(r"\{\{.*?\}\}|\{\{|\}\}", re.DOTALL)
_BEHAVIOUR_SWITCH = re.compile(r"__[A-Z]+__")
# Empty brackets with the spaces before them; not after a word, `!`, `>`, `]` or `)`: `main()`,
# `println!()`, `f::<T>()` are code, not leftovers.
_EMPTY_BRACKETS = re.compile(r"[ \t\u00a0]*(?<![\w!>\])])\(\s*[,;]?\s*\)")
_SPACES = re.compile(r"[ \t\u00a0]+")
_PRE_EDGES = re.compile(r"\A(?:[ \t]*\n)+|\s+\Z")
_TRAILING_SPACES = re.compile(r"[ \t]+$", re.MULTILINE)
# Code text is hidden from the prose cleanup by swapping the characters that the cleanup
# touches (and, in <pre>, the whitespace it normalises) for Unicode noncharacters, which are
# never assigned and are removed from the input first; they are swapped back at the end.
_PROTECTED = "(){}_"
_PRE_PROTECTED = _PROTECTED + " \t\n"
_SENTINELS = "".join(chr(0xFDD0 + i) for i in range(len(_PRE_PROTECTED)))
_PROTECT = str.maketrans(_PROTECTED, _SENTINELS[:len(_PROTECTED)])
_PROTECT_PRE = str.maketrans(_PRE_PROTECTED, _SENTINELS)
_UNPROTECT = str.maketrans(_SENTINELS, _PRE_PROTECTED)
_REMOVE_SENTINELS = str.maketrans("", "", _SENTINELS)
_BLANK_LINES = re.compile(r"\n{3,}")
_REDIRECT_TEXT = re.compile(r"\s*#redirect\s*:?\s*\[\[", re.IGNORECASE)


def language_of_dbname(dbname: str) -> str | None:
  """`dewiki` -> `de`, `be_x_oldwiki` -> `be-x-old`; None for other projects (`dewiktionary`)."""
  if not dbname.endswith("wiki") or len(dbname) == len("wiki"):
    return None
  return dbname[:-len("wiki")].replace("_", "-")


def article_url(language: str, title: str) -> str:
  return f"https://{language}.wikipedia.org/wiki/{quote(title.replace(' ', '_'), safe='/:(),')}"


# ---------------------------------------------------------------------------------------------
# Reading the XML dump.


@dataclasses.dataclass
class _SiteInfo:
  dbname: str = ""
  language: str | None = None
  hidden_prefixes: tuple[str, ...] = ENGLISH_HIDDEN_PREFIXES


class Malformed(Exception):
  """A page element that cannot become a Document; `reason` is counted in stats."""

  def __init__(self, reason: str, where: str):
    super().__init__(f"{reason}: {where}")
    self.reason, self.where = reason, where


def _local(tag: str) -> str:
  return tag.rpartition("}")[2]


def _child(element: ET.Element, name: str) -> ET.Element | None:
  for child in element:
    if _local(child.tag) == name:
      return child
  return None


def _child_text(element: ET.Element | None, name: str) -> str | None:
  child = None if element is None else _child(element, name)
  return None if child is None else (child.text or "")


def _site_info(element: ET.Element) -> _SiteInfo:
  dbname = (_child_text(element, "dbname") or "").strip()
  prefixes = set(ENGLISH_HIDDEN_PREFIXES)
  namespaces = _child(element, "namespaces")
  for namespace in namespaces if namespaces is not None else ():
    if namespace.get("key") in HIDDEN_LINK_NAMESPACES and namespace.text:
      prefixes.add(namespace.text.strip().lower())
  return _SiteInfo(dbname, language_of_dbname(dbname), tuple(sorted(prefixes)))


def page_document(element: ET.Element, site: _SiteInfo, path: str) -> Document:
  """A Document holding the raw wikitext of one <page>; raises Malformed without title/id/ns."""
  title, page_id = _child_text(element, "title"), _child_text(element, "id")
  try:
    namespace = int(_child_text(element, "ns") or "")
  except ValueError:
    namespace = None
  if not title or not page_id or namespace is None:
    raise Malformed("page_missing_fields", f"{path}: page {title!r} id {page_id!r}")
  revisions = [child for child in element if _local(child.tag) == "revision"]
  revision = revisions[-1] if revisions else None  # history dumps: the newest comes last
  redirect = _child(element, "redirect")
  language = site.language or "unknown"
  revision_id = _child_text(revision, "id")
  metadata = {
      "title": title, "page_id": int(page_id) if page_id.isdigit() else page_id,
      "namespace": namespace, "language": language, "dbname": site.dbname,
      "revision_id": int(revision_id) if revision_id and revision_id.isdigit() else revision_id,
      "timestamp": _child_text(revision, "timestamp"),
      "url": article_url(language, title), "path": path,
      "redirect": None if redirect is None else redirect.get("title", ""),
      "hidden_link_prefixes": list(site.hidden_prefixes)}
  return Document(id=f"{site.dbname or 'wiki'}/{page_id}", source=SOURCE,
                  text=_child_text(revision, "text") or "", metadata=metadata)


def read_dump(stream, path: str) -> Iterator[Document | Malformed]:
  """Pages of a MediaWiki XML dump, streamed; ends with a Malformed where the XML breaks."""
  site, root = _SiteInfo(), None
  try:
    for event, element in ET.iterparse(stream, events=("start", "end")):
      if root is None:
        root = element
      if event != "end":
        continue
      name = _local(element.tag)
      if name == "siteinfo":
        site = _site_info(element)
      elif name == "page":
        try:
          yield page_document(element, site, path)
        except Malformed as malformed:
          yield malformed
        root.clear()  # pages are children of the root; drop the ones already read
  except ET.ParseError as error:
    yield Malformed("broken_xml", f"{path}: {error}")
  except DAMAGE as error:  # the pages before the cut or the bomb are kept
    yield Malformed(damage_reason(error), f"{path}: {error}")
  except OSError as error:  # bz2 / gzip data that does not decompress
    yield Malformed("broken_archive", f"{path}: {error}")


def _read_dump_file(readable: fileio.ReadableFile) -> Iterable[Document]:
  path = readable.metadata.path
  with pipeline.open_input(readable) as stream:
    for item in read_dump(stream, path):
      if isinstance(item, Malformed):
        report_malformed(item.reason, item.where)
      else:
        count("documents_read")
        yield item
  if pipeline.progress_bar is not None:
    pipeline.progress_bar.update(readable.metadata.size_in_bytes)


# ---------------------------------------------------------------------------------------------
# Page rules.


def language_filter(doc: Document, languages: frozenset[str]) -> Document | Drop:
  language = doc.metadata["language"]
  return doc if language in languages else Drop(f"language_{language}")


def article_filter(doc: Document) -> Document | Drop:
  namespace = doc.metadata["namespace"]
  return doc if namespace == ARTICLE_NAMESPACE else Drop(f"namespace_{namespace}")


def is_redirect(doc: Document) -> bool:
  """The dump's <redirect> element, or, for older dumps without it, `#REDIRECT [[...]]`."""
  return doc.metadata.get("redirect") is not None or bool(_REDIRECT_TEXT.match(doc.text))


def redirect_filter(doc: Document) -> Document | Drop:
  return Drop("redirect") if is_redirect(doc) else doc


def _is_hidden_link(title: str, hidden_prefixes: Iterable[str]) -> bool:
  if title.startswith(":"):  # [[:Category:X]] is an ordinary visible link
    return False
  prefix, colon, _ = title.partition(":")
  prefix = prefix.strip()
  if not colon:
    return False
  return (prefix.lower() in hidden_prefixes
          or _INTERLANGUAGE_PREFIX.fullmatch(prefix) is not None)


def _render(code, hidden_prefixes: frozenset[str]) -> str:
  return "".join(_render_node(node, hidden_prefixes) for node in code.nodes)


def _render_node(node, hidden_prefixes: frozenset[str]) -> str:
  if isinstance(node, nodes.Text):
    return node.value
  if isinstance(node, nodes.Wikilink):
    title = str(node.title).strip()
    if _is_hidden_link(title, hidden_prefixes):
      return ""
    if node.text is not None:
      return _render(node.text, hidden_prefixes)
    return title.lstrip(":")
  if isinstance(node, nodes.ExternalLink):
    return "" if node.title is None else _render(node.title, hidden_prefixes)
  if isinstance(node, nodes.Heading):
    return "\n" + _render(node.title, hidden_prefixes).strip() + "\n"
  if isinstance(node, nodes.HTMLEntity):
    return node.normalize()
  if isinstance(node, nodes.Tag):
    tag = str(node.tag).strip().lower()
    if tag in DROPPED_TAGS:
      return ""
    if tag == "br":
      return "\n"
    if node.wiki_markup and tag in ("li", "dt", "dd", "hr"):  # * # ; : ---- markers
      return ""
    text = "" if node.self_closing or node.contents is None else _render(node.contents,
                                                                        hidden_prefixes)
    if tag == "pre":
      text = _TRAILING_SPACES.sub("", _PRE_EDGES.sub("", text.replace("\u00a0", " ")))
      text = text.translate(_PROTECT_PRE)
    elif tag in CODE_TAGS or tag in VERBATIM_TAGS:
      text = text.translate(_PROTECT)
    return f"\n{text}\n" if tag in LINE_BREAK_TAGS else text
  # Templates, comments, template arguments ({{{1}}}): no text of the article.
  return ""


def wikitext_to_text(wikitext: str,
                     hidden_prefixes: Iterable[str] = ENGLISH_HIDDEN_PREFIXES) -> str:
  """Plain text of wikitext (module docstring); blank-line runs collapse to one blank line.

  The prose cleanup (leftover braces, behaviour switches, empty brackets, spaces) runs on the
  rendered text with the code of CODE_TAGS and VERBATIM_TAGS protected (see `_PROTECTED`).
  """
  wikitext = wikitext.translate(_REMOVE_SENTINELS)
  text = _render(mwparserfromhell.parse(wikitext), frozenset(p.lower() for p in hidden_prefixes))
  text = _LEFTOVER_TEMPLATE.sub("", text)
  text = _BEHAVIOUR_SWITCH.sub("", text)
  text = _EMPTY_BRACKETS.sub("", text)
  lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
  text = _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
  return text.translate(_UNPROTECT)


def clean_wikitext(doc: Document) -> Document:
  metadata = dict(doc.metadata)
  hidden_prefixes = metadata.pop("hidden_link_prefixes", ENGLISH_HIDDEN_PREFIXES)
  return dataclasses.replace(doc, text=wikitext_to_text(doc.text, hidden_prefixes),
                             metadata=metadata)


def non_empty(doc: Document) -> Document | Drop:
  return doc if doc.text.strip() else Drop("empty_after_cleaning")


def page_filters(languages: Iterable[str]) -> list:
  """The page rules of the module docstring, in order."""
  return [functools.partial(language_filter, languages=frozenset(languages)), article_filter,
          redirect_filter, clean_wikitext, non_empty]


# ---------------------------------------------------------------------------------------------
# Command line.


def _languages(value: str) -> list[str]:
  return [code.strip() for code in value.split(",") if code.strip()]


def add_arguments(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group("wikipedia")
  group.add_argument("--wikipedia_languages", default=",".join(DEFAULT_LANGUAGES),
                     help="wikipedia: comma-separated language codes to keep, as in the dump's "
                          "dbname without 'wiki' (default: the paper's 20 languages)")


def check_arguments(args: argparse.Namespace) -> list[str]:
  languages = _languages(args.wikipedia_languages)
  if not languages:
    return ["--wikipedia_languages is empty: give codes such as en,de,fr"]
  bad = [code for code in languages if not re.fullmatch(r"[a-z][a-z0-9-]*", code)]
  if bad:
    return [f"--wikipedia_languages: {bad} are not language codes; use lower-case codes such as "
            "en,de,be-x-old"]
  return []


def build(root: beam.Pipeline, args: argparse.Namespace) -> beam.PCollection:
  return (root
          | "ReadDumps" >> ReadFiles(args.input, _read_dump_file)
          | "PageRules" >> beam.ParDo(ApplyFilters(page_filters(
              _languages(args.wikipedia_languages)))))
