"""Wikipedia dumps: each page rule, the wikitext cleaning, the XML reader and the whole run."""

import bz2
import io
import json
from pathlib import Path

import pytest
from conftest import written_documents

from preprocessing import run, wikipedia
from preprocessing.document import Document, Drop
from preprocessing.testing import synthetic_wikipedia as synthetic


def _doc(text="Some text.", **metadata):
  base = {"title": "T", "page_id": 1, "namespace": 0, "language": "en", "redirect": None}
  return Document(id="enwiki/1", source="wikipedia", text=text, metadata={**base, **metadata})


@pytest.mark.parametrize("dbname, language", [
    ("enwiki", "en"), ("dewiki", "de"), ("be_x_oldwiki", "be-x-old"), ("dewiktionary", None),
    ("wiki", None), ("commonswiki", "commons")])
def test_language_of_dbname(dbname, language):
  assert wikipedia.language_of_dbname(dbname) == language


def test_language_filter():
  kept = frozenset(wikipedia.DEFAULT_LANGUAGES)
  assert len(kept) == 20
  assert wikipedia.language_filter(_doc(language="sr"), kept).metadata["language"] == "sr"
  assert wikipedia.language_filter(_doc(language="zh"), kept) == Drop("language_zh")
  assert wikipedia.language_filter(_doc(language="unknown"), kept) == Drop("language_unknown")


def test_article_filter():
  assert isinstance(wikipedia.article_filter(_doc(namespace=0)), Document)
  assert wikipedia.article_filter(_doc(namespace=14)) == Drop("namespace_14")
  assert wikipedia.article_filter(_doc(namespace=-1)) == Drop("namespace_-1")


def test_redirect_filter():
  assert isinstance(wikipedia.redirect_filter(_doc("Paris is a city.")), Document)
  assert isinstance(wikipedia.redirect_filter(_doc("See #REDIRECT [[X]] below.")), Document)
  redirect = _doc("#REDIRECT [[Paris]]", redirect="Paris")
  assert wikipedia.redirect_filter(redirect) == Drop("redirect")
  assert wikipedia.redirect_filter(_doc("  #redirect: [[Paris]]")) == Drop("redirect")
  assert wikipedia.redirect_filter(_doc("#WEITERLEITUNG [[Paris]]", redirect="Paris")) == Drop(
      "redirect")


@pytest.mark.parametrize("wikitext, text", [
    ("[[Paris|the capital]] and [[Lyon]].", "the capital and Lyon."),
    ("A {{lang|fr|mot}} word{{citation needed}}.", "A word."),
    ("Nested {{Infobox|a={{b|[[c]]}}}}text.", "Nested text."),
    ("Before<!-- hidden\nnote -->after.", "Beforeafter."),
    ("Fact.<ref name=\"a\">{{cite web|url=http://x}}</ref> More.<ref name=\"a\" />",
     "Fact. More."),
    ("Text.\n{| class=\"wikitable\"\n|-\n| a || b\n|}\nAfter.", "Text.\n\nAfter."),
    ("[[File:X.jpg|thumb|A [[caption]]]]Kept. [[Image:Y.png]] [[Category:Cities]]", "Kept."),
    ("[[:Category:Cities]] is a link.", "Category:Cities is a link."),
    ("Paris.\n[[fr:Paris]]\n[[de:Paris]]", "Paris."),
    ("== History ==\nOld.\n=== Early ===\nOlder.", "History\n\nOld.\n\nEarly\n\nOlder."),
    ("<div class=\"x\">Kept <b>bold</b> &amp; <span>span</span></div>",
     "Kept bold & span"),
    ("'''Bold''' and ''italic''.", "Bold and italic."),
    ("* one\n* two\n# three\n; term : def", "one\ntwo\nthree\nterm def"),
    ("Line<br/>break.", "Line\nbreak."),
    ("See [http://example.org the site] or [http://x.org] or http://y.org.",
     "See the site or or ."),
    ("Paris ({{IPA-fr|paʁi}}) is big.", "Paris is big."),
    ("One.\n\n\n\n\nTwo.   Three.\n   \n", "One.\n\nTwo. Three."),
    ("Broken {{template\nnever closed. Next }} text.", "Broken text."),
    ("__NOTOC__\nText <math>x^2</math> here.", "Text here."),
    ("{{Disambiguation}}\n<!-- x -->\n{{Stub}}", ""),
])
def test_wikitext_to_text(wikitext, text):
  assert wikipedia.wikitext_to_text(wikitext) == text


@pytest.mark.parametrize("wikitext, text", [
    # Empty brackets and braces in code are code, not template leftovers.
    ("The unit type <code>()</code> is <code><nowiki>mem::size_of::<()>()</nowiki></code>.",
     "The unit type () is mem::size_of::<()>()."),
    ("For example, <code><nowiki>mem::size_of::<u32>() == 4</nowiki></code>.",
     "For example, mem::size_of::<u32>() == 4."),
    ("Matches <code><nowiki>{()}</nowiki></code> but not <code><nowiki>{{}}</nowiki></code>.",
     "Matches {()} but not {{}}."),
    ("Literal <nowiki>{{</nowiki> and <nowiki>}}</nowiki> and <nowiki>{{x}}</nowiki>.",
     "Literal {{ and }} and {{x}}."),
    ("<tt>f()</tt>, <kbd>( )</kbd>, <samp>{{</samp>, <code>__FILE__</code>.",
     "f(), ( ), {{, __FILE__."),
    # A template inside <code> is still a template, and goes.
    ("Call <code>f({{param}})</code>.", "Call f()."),
    # <pre> keeps its brackets, braces, line breaks and indentation, on lines of its own.
    ("Code:<pre>\nfn main() {\n    let unit = ();  \n\n    {{ x }}\n}\n</pre>After.",
     "Code:\nfn main() {\n    let unit = ();\n\n    {{ x }}\n}\nAfter."),
    ("<pre>\n\n\u00a0\u00a0indented  (\t)\n</pre>", "  indented  (\t)"),
    # The prose around code is still cleaned.
    ("Paris ({{IPA-fr|paʁi}}) has <code>f()</code>, <nowiki>{{</nowiki> }}and ( ; ) more.__NOTOC__",
     "Paris has f(), {{ and more."),
    ("Paris ({{IPA-fr|paʁi}}) runs <pre>a()</pre> ({{x}}) then.", "Paris runs\na()\nthen."),
    # Empty brackets right after a word, `!`, `>`, `]` or `)` are a call written as prose.
    ("The main() and println!() and f::<T>() and a[0]() and f()() calls ({{x}}).",
     "The main() and println!() and f::<T>() and a[0]() and f()() calls."),
    # The noncharacters that protect code never come from the input.
    ("a\ufdd0b<code>\ufdd1()</code>", "ab()"),
])
def test_wikitext_to_text_leaves_code_alone(wikitext, text):
  assert wikipedia.wikitext_to_text(wikitext) == text


def test_code_in_the_mini_corpus():
  """Real pages (The Rust Reference as wikitext) with code in <code><nowiki> and <pre>."""
  path = (Path(__file__).parent.parent
          / "examples/mini_corpus/wikipedia/enwiki-20260414-pages-articles.xml.bz2")
  with bz2.open(path) as stream:
    pages = {doc.metadata["title"]: doc for doc in wikipedia.read_dump(stream, str(path))}
  functions = wikipedia.clean_wikitext(pages["Functions"]).text
  assert "For example, mem::size_of::<u32>() == 4." in functions
  tuples = wikipedia.clean_wikitext(pages["Tuple types"]).text
  assert "the tuple type with no fields (()) is often called unit" in tuples
  comments = wikipedia.clean_wikitext(pages["Comments"]).text
  assert comments.startswith("Lexer\n\nCOMMENT →\n      LINE_COMMENT\n    | INNER_LINE_DOC\n")


def test_localised_file_and_category_links():
  wikitext = "Text.\n[[Datei:Bild.jpg|mini|Unterschrift]]\n[[Kategorie:Stadt]]\n[[Datei]] bleibt."
  # Without the dump's siteinfo, Datei: is an ordinary prefix and its link shows all its text.
  assert wikipedia.wikitext_to_text(wikitext) == (
      "Text.\nmini|Unterschrift\nKategorie:Stadt\nDatei bleibt.")
  german = (*wikipedia.ENGLISH_HIDDEN_PREFIXES, "datei", "kategorie")
  assert wikipedia.wikitext_to_text(wikitext, german) == "Text.\n\nDatei bleibt."


def test_clean_wikitext_and_non_empty():
  doc = _doc("[[Kategorie:X]]{{Stub}}", hidden_link_prefixes=["kategorie"])
  cleaned = wikipedia.clean_wikitext(doc)
  assert cleaned.text == "" and "hidden_link_prefixes" not in cleaned.metadata
  assert wikipedia.non_empty(cleaned) == Drop("empty_after_cleaning")
  kept = wikipedia.clean_wikitext(_doc("'''Word''' here."))
  assert wikipedia.non_empty(kept).text == "Word here."


def _dump(dbname, pages, **kwargs):
  return synthetic.dump_xml(dbname, pages, **kwargs).encode("utf-8")


def test_read_dump_metadata_and_export_011():
  xml = _dump("dewiki", [
      synthetic.page_xml("Köln Hbf", 7, 0, "Der [[Bahnhof]].", timestamp="2022-07-01T12:00:00Z")],
      file_ns="Datei", category_ns="Kategorie",
      export_namespace="http://www.mediawiki.org/xml/export-0.11/")
  [doc] = list(wikipedia.read_dump(io.BytesIO(xml), "dewiki.xml"))
  assert doc.id == "dewiki/7" and doc.source == "wikipedia" and doc.text == "Der [[Bahnhof]]."
  assert doc.metadata == {
      "title": "Köln Hbf", "page_id": 7, "namespace": 0, "language": "de", "dbname": "dewiki",
      "revision_id": 70, "timestamp": "2022-07-01T12:00:00Z",
      "url": "https://de.wikipedia.org/wiki/K%C3%B6ln_Hbf", "path": "dewiki.xml",
      "redirect": None,
      "hidden_link_prefixes": ["category", "datei", "file", "image", "kategorie", "media"]}


def test_read_dump_truncated_keeps_pages_before_the_break():
  xml = _dump("enwiki", [synthetic.page_xml("A", 1, 0, "First."),
                         synthetic.page_xml("B", 2, 0, "Second.")])
  cut = xml[:xml.index(b"Second.")]
  items = list(wikipedia.read_dump(io.BytesIO(cut), "cut.xml"))
  assert [d.metadata["title"] for d in items[:-1]] == ["A"]
  assert isinstance(items[-1], wikipedia.Malformed) and items[-1].reason == "broken_xml"


def test_read_dump_broken_element_and_missing_fields():
  bad_page = "  <page>\n    <title>No id</title>\n    <ns>0</ns>\n  </page>\n"
  xml = _dump("enwiki", [bad_page, synthetic.page_xml("Ok", 3, 0, "Fine.")])
  items = list(wikipedia.read_dump(io.BytesIO(xml), "x.xml"))
  assert isinstance(items[0], wikipedia.Malformed) and items[0].reason == "page_missing_fields"
  assert items[1].metadata["title"] == "Ok"
  broken = _dump("enwiki", [synthetic.page_xml("A", 1, 0, "First."),
                            "  <page><title>B</title><ns>0</ns></pag>\n"])
  items = list(wikipedia.read_dump(io.BytesIO(broken), "b.xml"))
  assert items[0].metadata["title"] == "A" and items[1].reason == "broken_xml"


def test_read_dump_bad_compressed_data():
  stream = bz2.BZ2File(io.BytesIO(b"BZh9" + b"\x00" * 64))
  [item] = list(wikipedia.read_dump(stream, "bad.xml.bz2"))
  assert item.reason == "broken_archive"


def test_read_dump_truncated_archive():
  data = bz2.compress(_dump("svwiki", [synthetic.page_xml("A", 1, 0, "Text " * 50000)]))
  items = list(wikipedia.read_dump(bz2.BZ2File(io.BytesIO(data[:len(data) // 2])), "a.xml.bz2"))
  assert [item.reason for item in items] == ["truncated_file"]


def test_check_arguments():
  parser = run._parser("wikipedia")
  args = parser.parse_args(["--source=wikipedia", "--input=x", "--output=y"])
  assert wikipedia.check_arguments(args) == []
  args.wikipedia_languages = " , "
  assert "--wikipedia_languages" in wikipedia.check_arguments(args)[0]
  args.wikipedia_languages = "en,DE"
  assert "DE" in wikipedia.check_arguments(args)[0]


def test_end_to_end(tmp_path):
  inputs = tmp_path / "in"
  inputs.mkdir()
  (inputs / "enwiki-20220601-pages-articles.xml.bz2").write_bytes(bz2.compress(_dump("enwiki", [
      synthetic.page_xml("Paris", 1, 0, "{{Infobox}}'''Paris''' is the [[France|French]] capital."
                         "<ref>{{cite}}</ref>\n== History ==\nOld.\n[[Category:Cities]]"),
      synthetic.page_xml("Paname", 2, 0, "#REDIRECT [[Paris]]", redirect="Paris"),
      synthetic.page_xml("Talk:Paris", 3, 1, "Discuss."),
      synthetic.page_xml("Category:Cities", 4, 14, "Cities."),
      synthetic.page_xml("Stub", 5, 0, "{{Stub}}<!-- empty -->"),
  ])))
  (inputs / "dewiki-20220601-pages-articles.xml").write_bytes(_dump("dewiki", [
      synthetic.page_xml("Berlin", 10, 0, "'''Berlin''' ist [[Hauptstadt]].\n"
                         "[[Datei:B.jpg|mini|Bild]]\n[[Kategorie:Stadt]]")],
      file_ns="Datei", category_ns="Kategorie"))
  (inputs / "zhwiki-20220601-pages-articles.xml").write_bytes(_dump("zhwiki", [
      synthetic.page_xml("北京", 20, 0, "北京"), synthetic.page_xml("上海", 21, 0, "上海")]))
  truncated = _dump("frwiki", [synthetic.page_xml("Lyon", 30, 0, "Lyon est une ville."),
                               synthetic.page_xml("Nice", 31, 0, "Nice est une ville.")])
  (inputs / "frwiki-20220601-pages-articles.xml").write_bytes(
      truncated[:truncated.index(b"Nice est")])
  (inputs / "itwiki-20220601-pages-articles.xml.bz2").write_bytes(b"BZh9" + b"\x00" * 64)

  stats = run.main(["--source=wikipedia", f"--input={inputs / '*-pages-articles.xml*'}",
                    f"--output={tmp_path / 'out'}"])
  written = written_documents(tmp_path / "out")
  assert {doc_id: doc.text for doc_id, doc in written.items()} == {
      "enwiki/1": "Paris is the French capital.\n\nHistory\n\nOld.",
      "dewiki/10": "Berlin ist Hauptstadt.",
      "frwiki/30": "Lyon est une ville.",
  }
  assert written["dewiki/10"].metadata["url"] == "https://de.wikipedia.org/wiki/Berlin"
  assert stats["documents_read"] == 9 and stats["documents_written"] == 3
  assert stats["dropped"] == {"empty_after_cleaning": 1, "language_zh": 2, "namespace_1": 1,
                              "namespace_14": 1, "redirect": 1}
  assert stats["malformed"] == {"broken_archive": 1, "broken_xml": 1}
  assert json.loads((tmp_path / "out" / "stats.json").read_text())["documents_written"] == 3


def test_end_to_end_synthetic_sample(tmp_path):
  count = 60
  pattern = synthetic.write_sample_input(tmp_path / "in", count, seed=3)
  stats = run.main(["--source=wikipedia", f"--input={pattern}", f"--output={tmp_path / 'out'}",
                    "--wikipedia_languages=en,de"])
  kinds = synthetic.expected_kinds(count)
  kept = ("enwiki", "dewiki")
  assert stats["documents_read"] == count and stats["malformed"] == {}
  assert stats["dropped"]["language_zh"] == sum(n for (wiki, _), n in kinds.items()
                                                if wiki == "zhwiki")
  for kind, reason in (("redirect", "redirect"), ("talk", "namespace_1"),
                       ("template", "namespace_10"), ("category", "namespace_14"),
                       ("templates_only", "empty_after_cleaning")):
    assert stats["dropped"][reason] == sum(kinds[wiki, kind] for wiki in kept)
  assert stats["documents_written"] == sum(kinds[wiki, "article"] for wiki in kept)
  for doc in written_documents(tmp_path / "out").values():
    assert "{{" not in doc.text and "[[" not in doc.text and "<ref" not in doc.text
    assert "Category:" not in doc.text and "Kategorie:" not in doc.text and "|" not in doc.text
