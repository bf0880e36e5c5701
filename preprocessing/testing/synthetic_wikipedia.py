"""Synthetic MediaWiki XML dumps (export format 0.10, bz2) for benchmarks and tests (seeded).

Three wikis: enwiki and dewiki (kept by default) and zhwiki (dropped by language). Pages cycle
through KINDS, so the number of each kind is known from the count alone (`expected_kinds`):
articles full of markup the cleaning removes (templates, references, tables, comments, file and
category links), redirects, pages outside the article namespace and pages that hold nothing but
templates.
"""

from __future__ import annotations

import bz2
import random
from collections import Counter
from pathlib import Path
from xml.sax.saxutils import escape, quoteattr

from preprocessing.testing.synthetic_web import ENGLISH

EXPORT_NAMESPACE = "http://www.mediawiki.org/xml/export-0.10/"
# (dbname, its names for the File and Category namespaces)
WIKIS = (("enwiki", "File", "Category"), ("dewiki", "Datei", "Kategorie"),
         ("zhwiki", "File", "Category"))
KINDS = ("article", "article", "article", "article", "redirect", "talk", "template", "article",
         "templates_only", "category")
KIND_NAMESPACE = {"talk": 1, "template": 10, "category": 14}
GERMAN = ("der die das und in den von zu mit sich des auf für ist im dem nicht ein eine als "
          "auch es an werden aus er hat dass sie nach wird bei einer um am sind noch wie einem "
          "über einen so zum war haben nur oder aber vor zur bis mehr durch man sein wurde").split()


def _sentence(rng: random.Random, words: list[str]) -> str:
  return " ".join(rng.choices(words, k=rng.randint(6, 16))).capitalize() + "."


def _link(rng: random.Random, words: list[str]) -> str:
  target = rng.choice(words).capitalize()
  return f"[[{target}|{rng.choice(words)}]]" if rng.random() < 0.5 else f"[[{target}]]"


def article_wikitext(rng: random.Random, words: list[str], file_ns: str, category_ns: str) -> str:
  """An article with the markup a real one has: infobox, links, refs, a table, sections."""
  parts = ["{{Infobox settlement\n| name = " + rng.choice(words) + "\n| population = "
           + str(rng.randint(100, 99999)) + "\n}}",
           f"'''{rng.choice(words).capitalize()}''' " + _sentence(rng, words)
           + "<ref>{{cite web |url=http://example.org |title=Source}}</ref> "
           + " ".join(_link(rng, words) for _ in range(2)) + ". " + _sentence(rng, words)]
  for _ in range(rng.randint(1, 3)):
    parts.append(f"== {rng.choice(words).capitalize()} ==")
    parts.append(_sentence(rng, words) + "<!-- editor note --> " + _sentence(rng, words)
                 + '<ref name="a" />')
    if rng.random() < 0.5:
      parts.append(f"[[{file_ns}:Photo{rng.randint(1, 99)}.jpg|thumb|A caption]]")
    if rng.random() < 0.5:
      parts.append("{| class=\"wikitable\"\n! Year !! Value\n|-\n| 2020 || "
                   + str(rng.randint(1, 99)) + "\n|}")
    if rng.random() < 0.5:
      parts.append("* " + _sentence(rng, words) + "\n* " + _sentence(rng, words))
  parts.append("== References ==\n{{Reflist}}")
  parts.append(f"[[{category_ns}:{rng.choice(words).capitalize()}]]\n[[fr:{rng.choice(words)}]]")
  return "\n\n".join(parts)


def page_xml(title: str, page_id: int, namespace: int, text: str,
             redirect: str | None = None, timestamp: str = "2022-06-01T00:00:00Z") -> str:
  redirect_xml = "" if redirect is None else f"    <redirect title={quoteattr(redirect)} />\n"
  return (f"  <page>\n    <title>{escape(title)}</title>\n    <ns>{namespace}</ns>\n"
          f"    <id>{page_id}</id>\n{redirect_xml}    <revision>\n      <id>{page_id * 10}</id>\n"
          f"      <timestamp>{timestamp}</timestamp>\n"
          f'      <text bytes="{len(text.encode())}" xml:space="preserve">{escape(text)}</text>\n'
          "    </revision>\n  </page>\n")


def dump_header(dbname: str, file_ns: str = "File", category_ns: str = "Category",
                export_namespace: str = EXPORT_NAMESPACE) -> str:
  language = dbname.removesuffix("wiki")
  namespaces = {-2: "Media", 0: "", 1: "Talk", 6: file_ns, 10: "Template", 14: category_ns}
  namespace_xml = "".join(
      f'      <namespace key="{key}" case="first-letter">{name}</namespace>\n'
      if name else f'      <namespace key="{key}" case="first-letter" />\n'
      for key, name in namespaces.items())
  return (f'<mediawiki xmlns="{export_namespace}" version="0.10" xml:lang="{language}">\n'
          f"  <siteinfo>\n    <sitename>Wikipedia</sitename>\n    <dbname>{dbname}</dbname>\n"
          f"    <base>https://{language}.wikipedia.org/wiki/Main_Page</base>\n"
          f"    <namespaces>\n{namespace_xml}    </namespaces>\n  </siteinfo>\n")


def dump_xml(dbname: str, pages: list[str], file_ns: str = "File", category_ns: str = "Category",
             export_namespace: str = EXPORT_NAMESPACE) -> str:
  """A whole dump from `page_xml` strings."""
  return (dump_header(dbname, file_ns, category_ns, export_namespace) + "".join(pages)
          + "</mediawiki>\n")


def page_kind(index: int) -> str:
  return KINDS[index % len(KINDS)]


def page_wiki(index: int) -> str:
  return WIKIS[(index // len(KINDS)) % len(WIKIS)][0]


def expected_kinds(count: int) -> Counter:
  """(dbname, kind) -> number of pages that write_sample_input(count) writes."""
  return Counter((page_wiki(i), page_kind(i)) for i in range(count))


def _page(rng: random.Random, index: int, file_ns: str, category_ns: str) -> str:
  kind, words = page_kind(index), GERMAN if page_wiki(index) == "dewiki" else ENGLISH
  title = f"{rng.choice(words).capitalize()} {index}"
  page_id = index + 1
  if kind == "redirect":
    return page_xml(title, page_id, 0, f"#REDIRECT [[{rng.choice(words).capitalize()}]]",
                    redirect=rng.choice(words).capitalize())
  if kind == "templates_only":
    return page_xml(title, page_id, 0, "{{Disambiguation}}\n<!-- nothing yet -->\n{{Stub}}")
  if kind in KIND_NAMESPACE:
    prefix = {"talk": "Talk", "template": "Template", "category": category_ns}[kind]
    return page_xml(f"{prefix}:{title}", page_id, KIND_NAMESPACE[kind], _sentence(rng, words))
  return page_xml(title, page_id, 0, article_wikitext(rng, words, file_ns, category_ns))


def write_sample_input(directory: Path, count: int, seed: int = 0) -> str:
  """Writes `count` pages over three bz2 dumps; returns the glob for --input."""
  directory = Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  rng = random.Random(seed)
  for dbname, file_ns, category_ns in WIKIS:
    path = directory / f"{dbname}-20220601-pages-articles.xml.bz2"
    with bz2.open(path, "wt", encoding="utf-8") as f:
      f.write(dump_header(dbname, file_ns, category_ns))
      for index in range(count):
        if page_wiki(index) == dbname:
          f.write(_page(rng, index, file_ns, category_ns))
      f.write("</mediawiki>\n")
  return str(directory / "*wiki-*-pages-articles.xml*")
