"""`--source=arxiv`: each rule on its own, then `preprocessing.run` end to end on arXiv files."""

import argparse
import gzip
import json
from collections import Counter

import pytest
from conftest import written_documents

from preprocessing import arxiv, run
from preprocessing.document import Document, Drop
from preprocessing.testing import synthetic_arxiv
from preprocessing.wet import Malformed

MAIN = (b"\\documentclass{article}\n\\newcommand{\\R}{\\mathbb{R}}\n\\begin{document}\n"
        b"\\section{Intro}\nText in $\\R$.\n\\input{body}\n\\end{document}\n")


def _files(**named: str) -> dict[str, bytes]:
  return {name.replace("__", "/").replace("_tex", ".tex"): text.encode()
          for name, text in named.items()}


def test_arxiv_id_strips_archive_extensions_only():
  assert arxiv.arxiv_id("/in/2302.13971.tar.gz") == "2302.13971"
  assert arxiv.arxiv_id("/in/2302.13971.tar") == "2302.13971"
  assert arxiv.arxiv_id("/in/2302.13971.gz") == "2302.13971"
  assert arxiv.arxiv_id("gs://bucket/hep-th9901001.gz") == "hep-th9901001"
  assert arxiv.arxiv_id("/in/2302.13971") == "2302.13971"


def test_unpack_reads_archives_gzip_and_plain_tex():
  files = {"main.tex": MAIN, "sec/a.tex": b"A", "fig.png": b"\x89PNG"}
  assert arxiv.unpack(synthetic_arxiv.tar_bytes(files), "x") == files
  assert arxiv.unpack(synthetic_arxiv.tar_bytes(files, compress=False), "x") == files
  # Beam already decompressed `.gz` by the name; a file named otherwise may still be gzip.
  assert arxiv.unpack(gzip.compress(MAIN), "2302.1") == {"2302.1.tex": MAIN}
  assert arxiv.unpack(MAIN, "2302.1") == {"2302.1.tex": MAIN}


@pytest.mark.parametrize("data, reason", [
    (b"", "empty_file"),
    (gzip.compress(MAIN, mtime=0)[:20], "broken_gzip"),
    (synthetic_arxiv.tar_bytes({"main.tex": MAIN * 50}, compress=False)[:700], "broken_archive"),
])
def test_unpack_reports_broken_input(data, reason):
  with pytest.raises(arxiv.UnpackError, match=reason):
    arxiv.unpack(data, "x")


def test_strip_comments_keeps_escaped_percent():
  text = "95\\% sure % a comment\n% whole line\n\nline break\\\\% comment\nkept"
  assert arxiv.strip_comments(text) == "95\\% sure\n\nline break\\\\\nkept"
  assert arxiv.strip_comments("no comments\n\nhere") == "no comments\n\nhere"


def test_is_main_file():
  assert arxiv.is_main_file(MAIN.decode())
  assert not arxiv.is_main_file("\\section{Only a part}")
  assert not arxiv.is_main_file(arxiv.strip_comments("%\\documentclass{article}\n"
                                                     "\\begin{document}"))


def test_find_main_file_prefers_root_then_longest_then_name():
  letter = b"\\documentclass{letter}\\begin{document}Thanks.\\end{document}"
  files = {"response.tex": letter, "paper.tex": MAIN, "body.tex": b"Long body. " * 20,
           "old/version1.tex": MAIN + b"x" * 5000}
  main, inlined = arxiv.find_main_file(files)
  assert main == "paper.tex" and "Long body." in inlined.text
  assert arxiv.find_main_file({"b.tex": letter, "a.tex": letter})[0] == "a.tex"
  assert arxiv.find_main_file({"intro.tex": b"\\section{A}", "fig.pdf": b"%PDF"}) is None


def test_inline_inputs_recursive_relative_to_main_directory():
  files = _files(paper__main_tex="A \\input{sections/one}\n\\include{sections/two.tex} "
                                 "\\includegraphics{fig} % \\input{commented}",
                 paper__sections__one_tex="one \\input{sections/three}",  # relative to main
                 paper__sections__two_tex="two \\input sections/three.tex",
                 paper__sections__three_tex="three % comment")
  result = arxiv.inline_inputs(files, "paper/main.tex")
  assert result.text == "A one three\ntwo three \\includegraphics{fig}"
  assert (result.inlined, result.missing, result.cyclic) == (4, 0, 0)


def test_inline_inputs_counts_missing_files_and_cycles():
  files = _files(main_tex="A \\input{a} \\input{gone} \\include{../outside}",
                 a_tex="a \\input{b}", b_tex="b \\input{a} \\input{main}")
  result = arxiv.inline_inputs(files, "main.tex")
  assert result.text == "A a b    "
  assert (result.inlined, result.missing, result.cyclic) == (2, 2, 2)


def test_split_at_first_section():
  text = ("\\documentclass{article}\\renewcommand\\section{x}\\begin{document}\\maketitle "
          "Abstract.\\section*{Intro} Body \\sectionmark{y} \\section{Two}\\end{document}Tail")
  preamble, body = arxiv.split_at_first_section(text)
  assert preamble.endswith("Abstract.")
  assert body == "\\section*{Intro} Body \\sectionmark{y} \\section{Two}"
  assert arxiv.split_at_first_section("\\begin{document}No sections.\\end{document}") is None
  assert arxiv.split_at_first_section("\\section{A} fragment")[1] == "\\section{A} fragment"


def test_remove_bibliography():
  text = ("Text.\n\\bibliographystyle{plain}\n\\bibliography{refs,more}\n"
          "\\begin{thebibliography}{9}\\bibitem{a} A.\\end{thebibliography}\nEnd.\n"
          "\\printbibliography")
  assert arxiv.remove_bibliography(text) == "Text.\n\n\n\nEnd.\n"
  assert arxiv.remove_bibliography("A \\begin{thebibliography}{9} unterminated") == "A "
  assert arxiv.remove_bibliography("A \\cite{b}.") == "A \\cite{b}."


def _expand(text, **kwargs):
  return arxiv.expand_macros(text, **kwargs).text


def test_expand_macros_without_and_with_arguments():
  text = ("\\newcommand{\\R}{\\mathbb{R}}\\newcommand*\\LLM{LLM}\\newcommand{\\norm}[1]{|#1|}"
          "\\def\\pair#1#2{(#1,#2)}\n$\\R$ \\LLM{} is \\LLM. \\norm{x^2} \\norm y \\pair{a}{b} "
          "\\pair c d \\Rest")
  result = arxiv.expand_macros(text)
  assert result.text == "\n$\\mathbb{R}$ LLM is LLM. |x^2| |y| (a,b) (c,d) \\Rest"
  assert (result.defined, result.expanded, result.unsupported) == (4, 7, 0)


def test_expand_macros_optional_argument_default():
  text = "\\newcommand{\\pair}[2][x]{(#1,#2)}\\pair{y} \\pair[z]{w} \\pair [{]}]{v}"
  assert _expand(text) == "(x,y) (z,w) ({]},v)"  # braces hide a `]` in the optional argument


def test_expand_macros_nested_and_in_order_of_definition():
  text = ("\\newcommand{\\R}{\\mathbb{R}}\\newcommand{\\Rn}[1]{\\R^{#1}}\\def\\sp{\\Rn{n}}"
          "\\sp, \\renewcommand{\\R}{\\mathbb{C}}\\sp, \\providecommand{\\R}{no}\\R")
  assert _expand(text) == "\\mathbb{R}^{n}, \\mathbb{C}^{n}, \\mathbb{C}"


def test_expand_macros_keeps_control_words_apart():
  assert _expand("\\newcommand{\\a}{\\alpha}\\a x \\a{}x \\a") == "\\alpha x \\alpha x \\alpha"
  assert _expand("\\newcommand{\\w}{\\foo}\\w{}bar") == "\\foo bar"
  assert _expand("\\newcommand{\\R}{r}\\\\R \\R") == "\\\\R r"  # `\\` is a line break


def test_expand_macros_double_hash_and_unsupported_definitions():
  text = "\\newcommand{\\mk}[1]{\\def\\inner##1{#1-##1}}\\mk{a}\\inner{b}"
  assert _expand(text) == "a-b"
  result = arxiv.expand_macros("\\def\\dl#1.{[#1]}\\dl x. \\def\\@internal{y}z")
  assert result.text == "\\dl x. z" and result.unsupported == 2 and result.defined == 0


def test_expand_macros_without_expansion_only_collects_definitions():
  result = arxiv.expand_macros("\\documentclass{article}\\newcommand{\\R}{r}\\R", expand=False)
  assert result.text == "\\documentclass{article}\\R"
  assert _expand("\\R", macros=result.macros) == "r"


@pytest.mark.parametrize("text, reason", [
    ("\\newcommand{\\bad}{\\textbf{x}\nmore text", "unbalanced_braces"),
    ("\\def\\bad#1 no group", "unbalanced_braces"),
    ("\\newcommand{\\f}[1]{#1}\\f{open", "unbalanced_braces"),
    ("\\newcommand{\\f}[1]{#1}{\\f}", "unbalanced_braces"),
    ("\\newcommand{\\f}[2]{#1#2}\\f{a}", "missing_argument"),
    ("\\def\\loop{\\loop}\\loop", "macro_expansion_limit"),
])
def test_expand_macros_raises_on_what_it_cannot_parse(text, reason):
  with pytest.raises(arxiv.TexError, match=reason):
    arxiv.expand_macros(text, max_expansions=50)


def test_has_prose():
  assert arxiv.has_prose("\\section{Intro}\nWe show this.")
  assert not arxiv.has_prose("\\section{Introduction}\\label{sec:intro}\n\n"
                             "\\subsection*{More} \\cite[p.~2]{smith} \\maketitle")


def _doc(text):
  return Document(id="2302.00001", source="arxiv", text=text, metadata={"path": "in/x.gz"})


def test_clean_paper():
  text = ("\\documentclass{article}\n\\newcommand{\\R}{\\mathbb{R}}\n\\begin{document}\n"
          "\\title{T}\\maketitle\n\\section{Intro}\nWe use $\\R$.\n\n\n\nMore.\n"
          "\\bibliography{refs}\n\\end{document}\n")
  doc = arxiv.clean_paper(_doc(text))
  assert doc.text == "\\section{Intro}\nWe use $\\mathbb{R}$.\n\nMore."
  assert doc.metadata == {"path": "in/x.gz", "macros_defined": 1, "macros_expanded": 1,
                          "macros_unsupported": 0}


def test_clean_paper_drops_and_malformed():
  assert arxiv.clean_paper(_doc("\\begin{document}Note.\\end{document}")) == Drop("no_section")
  assert arxiv.clean_paper(_doc("\\section{A}\\section{B}\\bibliography{r}")) == Drop("empty")
  assert arxiv.clean_paper(_doc("\\def\\x{{}\\section{A} Text.")) == Malformed(
      "unbalanced_braces", "in/x.gz")
  assert arxiv.clean_paper(_doc("\\def\\x{\\x}\\section{A} \\x"), max_expansions=10) == Malformed(
      "macro_expansion_limit", "in/x.gz")


def test_read_paper():
  archive = synthetic_arxiv.tar_bytes({"src/main.tex": MAIN, "src/body.tex": b"Body % c"})
  doc = arxiv.read_paper(archive, "/in/2302.13971.tar.gz")
  assert doc.id == "2302.13971" and doc.text.endswith("\\section{Intro}\nText in $\\R$.\n"
                                                      "Body\n\\end{document}\n")
  assert doc.metadata == {"arxiv_id": "2302.13971", "path": "/in/2302.13971.tar.gz",
                          "main_file": "src/main.tex", "inlined_files": 1, "missing_inputs": 0,
                          "cyclic_inputs": 0}
  single = arxiv.read_paper(MAIN, "/in/2302.1.gz")
  assert single.metadata["main_file"] == "2302.1.tex" and single.metadata["missing_inputs"] == 1
  assert arxiv.read_paper(synthetic_arxiv.tar_bytes({"a.tex": b"\\section{A}"}), "p") == Drop(
      "no_main_tex")
  assert arxiv.read_paper(b"", "/in/e.gz") == Malformed("empty_file", "/in/e.gz")


def test_latin1_source_is_read():
  doc = arxiv.read_paper(MAIN.replace(b"Text", b"Caf\xe9"), "p.gz")
  assert "Café" in doc.text


def test_check_arguments():
  assert arxiv.check_arguments(argparse.Namespace(arxiv_max_expansions=10)) == []
  assert "--arxiv_max_expansions=0" in arxiv.check_arguments(
      argparse.Namespace(arxiv_max_expansions=0))[0]


def test_synthetic_sample_is_seeded(tmp_path):
  def contents(name, seed):
    synthetic_arxiv.write_sample_input(tmp_path / name, 9, seed=seed)
    return {path.name: path.read_bytes() for path in (tmp_path / name).iterdir()}

  assert contents("a", 1) == contents("b", 1) != contents("c", 2)


def test_unreadable_files_are_reported(tmp_path):
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "2301.00001.gz").write_bytes(b"not gzip at all")  # read as a lone .tex
  (tmp_path / "in" / "2301.00002.tar.gz").write_bytes(b"")
  (tmp_path / "in" / "2301.00003.gz").write_bytes(gzip.compress(MAIN)[:30])
  (tmp_path / "in" / "2301.00004.tar").write_bytes(
      synthetic_arxiv.tar_bytes({"main.tex": MAIN * 50}, compress=False)[:700])
  stats = run.main(["--source=arxiv", f"--input={tmp_path / 'in' / '*'}",
                    f"--output={tmp_path / 'out'}"])
  assert stats["malformed"] == {"broken_archive": 1, "broken_gzip": 1, "empty_file": 1}
  assert stats["dropped"] == {"no_main_tex": 1} and stats["documents_read"] == 1


def test_arxiv_end_to_end(tmp_path):
  count = 2 * len(synthetic_arxiv.KINDS)
  pattern = synthetic_arxiv.write_sample_input(tmp_path / "in", count, seed=4)
  stats = run.main(["--source=arxiv", f"--input={pattern}", f"--output={tmp_path / 'out'}"])

  kinds = synthetic_arxiv.KINDS
  outcome = {synthetic_arxiv.paper_id(i): synthetic_arxiv.KIND_OUTCOMES[kinds[i % len(kinds)]]
             for i in range(count)}
  outcomes = Counter(outcome.values())
  kept_ids = sorted(paper for paper, result in outcome.items() if result == "kept")
  written = written_documents(tmp_path / "out")
  assert sorted(written) == kept_ids and len(kept_ids) == 8
  assert stats["documents_written"] == 8
  assert stats["dropped"] == {"empty": 2, "no_main_tex": 2, "no_section": 2}
  assert stats["malformed"] == {"broken_gzip": 2, "unbalanced_braces": 2}
  assert {f"{group}/{reason}": n for group in ("dropped", "malformed")
          for reason, n in stats[group].items()} == {k: v for k, v in outcomes.items()
                                                      if k != "kept"}
  # Papers read: all but the truncated archives; the unbalanced ones fail after reading.
  assert stats["documents_read"] == count - 2
  assert stats["arxiv_missing_inputs"] == 4  # 2 papers missing an appendix, 2 their only section
  for doc in written.values():
    assert doc.text.startswith("\\section{Introduction}")
    assert "large language model" in doc.text and "95\\%" in doc.text
    for gone in ("\\newcommand", "\\def", "\\LLM", "% TODO", "thebibliography", "\\bibliography",
                 "\\maketitle", "\\end{document}"):
      assert gone not in doc.text
    assert doc.metadata["macros_expanded"] > 0 and doc.metadata["macros_defined"] == 6
  by_kind = {synthetic_arxiv.KINDS[i]: written.get(synthetic_arxiv.paper_id(i))
             for i in range(len(synthetic_arxiv.KINDS))}
  assert by_kind["plain_tar"].metadata["main_file"] == "main.tex"
  assert by_kind["single_gz"].metadata["main_file"] == f"{by_kind['single_gz'].id}.tex"
  assert by_kind["missing_inputs"].metadata["missing_inputs"] == 1
  assert by_kind["missing_inputs"].metadata["cyclic_inputs"] == 1
  assert "\\subsection{Details}" in by_kind["tar_gz"].text
  assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats
