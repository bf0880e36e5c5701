"""`--source=arxiv`: LaTeX sources of arXiv papers, cleaned as the LLaMA paper describes.

Input is what arXiv serves for a paper: a tar archive (`<id>.tar.gz` or `<id>.tar`) of .tex files,
possibly in subdirectories, with figures and other files beside them; or a single-file submission,
which arXiv serves as the gzipped .tex (`<id>.gz`). The document id is the file name without its
archive extensions, i.e. the arXiv id. Per paper:
  1. unpack the raw bytes, decompressing gzip here rather than by the file name so that a
     truncated stream is caught (malformed: `empty_file`, `broken_gzip`, `broken_archive`), and
     within preprocessing.decompress's limits, so that a decompression bomb is refused before it
     is held (malformed: `decompression_bomb`, also for a member declaring more than the member
     limit); a file that is neither gzip nor tar is taken for a lone .tex file. Every unpacked
     paper counts in `documents_read`.
  2. find the main file: a .tex file with `\\documentclass` (or LaTeX 2.09's `\\documentstyle`)
     and `\\begin{document}` outside comments (Drop `no_main_tex`). If several qualify, the one
     nearest the archive root wins, then the one longest after inlining (a standalone
     supplement or response letter is shorter than the paper), then the first by name.
  3. remove `%` comments (not `\\%`); lines holding only a comment go entirely
  4. inline `\\input{...}` and `\\include{...}` recursively, with or without the .tex extension,
     relative to the main file's directory as TeX resolves them; a file that is not in the
     archive, or that would include itself, becomes nothing and is counted in metadata
     (`missing_inputs`, `cyclic_inputs`) and in the `arxiv_missing_inputs` counter
  5. remove everything before the first `\\section` after `\\begin{document}` (Drop
     `no_section`), and everything from `\\end{document}` on
  6. remove the bibliography: `thebibliography` environments, `\\bibliography{...}`,
     `\\bibliographystyle{...}` and `\\printbibliography`
  7. expand user macros defined with `\\newcommand`, `\\renewcommand`, `\\providecommand`
     (starred or not, with up to 9 arguments and an optional first argument's default),
     `\\def` and `\\gdef` (undelimited parameters #1..#9), and remove the definitions. Definitions
     are read from the whole paper, preamble included, and take effect where they stand, as in
     TeX; an expansion is scanned again, so a macro whose body uses another macro expands fully.
     Unbalanced braces in a definition or an argument, or a missing argument, make the paper
     malformed (`unbalanced_braces`, `missing_argument`); so does a paper needing more than
     --arxiv_max_expansions expansions, which is what a recursive macro does
     (`macro_expansion_limit`). Definitions this does not expand (a `\\def` with delimited
     parameters, names containing @) are removed and counted in metadata (`macros_unsupported`).
  8. collapse runs of blank lines; a paper with no prose left, only headings, labels, citations
     and commands (all its sections in files missing from the archive), is dropped
     (Drop `empty`).

Metadata: arxiv_id, path, main_file, inlined_files, missing_inputs, cyclic_inputs,
macros_defined, macros_expanded, macros_unsupported.

Departures: `\\input` is matched with braces or with a plain file name (`\\input intro`); a
`%` inside a verbatim environment or a `\\url` is taken for a comment, as the paper's rule does
not look at context; `\\let`, `\\newenvironment` and `\\DeclareMathOperator` are left as they
are; files that are not UTF-8 are read as Latin-1 (older arXiv sources), so no paper is lost to
its encoding.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import posixpath
import re
import tarfile
import zlib
from collections.abc import Iterable
from typing import NamedTuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes

from preprocessing import pipeline as wiring
from preprocessing.decompress import LIMITS, DecompressionBomb, Limits, decompress
from preprocessing.document import Document, Drop
from preprocessing.pipeline import ReadFiles, count, report_malformed
from preprocessing.wet import Malformed

SOURCE = "arxiv"
DEFAULT_MAX_EXPANSIONS = 100_000
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tex.gz", ".gz", ".tex")

_INPUT = re.compile(r"\\(?:input|include)(?![A-Za-z@])\s*(?:\{([^{}]*)\}|([^\s{}\\%]+))")
_COMMENT = re.compile(r"(?<!\\)((?:\\\\)*)%.*")
_DOCUMENTCLASS = re.compile(r"\\document(?:class|style)(?![A-Za-z@])")
_BEGIN_DOCUMENT = re.compile(r"\\begin\s*\{document\}")
_END_DOCUMENT = re.compile(r"\\end\s*\{document\}")
_SECTION = re.compile(r"\\section(?![A-Za-z@])")
_BIBLIOGRAPHY_ENV = re.compile(
    r"\\begin\s*\{thebibliography\}.*?(?:\\end\s*\{thebibliography\}|\Z)", re.S)
_BIBLIOGRAPHY_COMMANDS = re.compile(
    r"\\(?:bibliography|bibliographystyle)\s*\{[^{}]*\}|\\printbibliography(?![A-Za-z@])")
_CONTROL = re.compile(r"\\([A-Za-z]+|.)", re.S)
_DEFINITION_NAME = re.compile(r"\\(?:[A-Za-z@]+|.)", re.S)
_PARAMETER = re.compile(r"#(#|[1-9])")
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n){2,}")
# Headings and cross-references: text, but not prose (see has_prose).
_NOT_PROSE = re.compile(r"\\(?:(?:sub)*section|(?:sub)?paragraph|chapter|part|label|ref|eqref"
                        r"|cite\w*)\*?\s*(?:\[[^\]]*\])?\s*\{[^{}]*\}|\\(?:[A-Za-z@]+|.)", re.S)
_DEFINERS = frozenset({"newcommand", "renewcommand", "providecommand", "def", "gdef"})


class UnpackError(Exception):
  """An input file that is not a readable paper; the message is the malformed reason."""


class TexError(Exception):
  """LaTeX this cannot parse (unbalanced braces, ...); the message is the malformed reason."""


def arxiv_id(path: str) -> str:
  """The arXiv id an input file is named by: its base name without archive extensions."""
  name = posixpath.basename(path.replace("\\", "/"))
  for suffix in ARCHIVE_SUFFIXES:
    if name.lower().endswith(suffix) and len(name) > len(suffix):
      return name[:-len(suffix)]
  return name


def unpack(data: bytes, paper_id: str, limits: Limits = LIMITS) -> dict[str, bytes]:
  """Files of one paper by normalised path; a lone .tex file is named `<paper_id>.tex`. Output
  past `limits` (a decompression bomb) is refused before it is held."""
  if not data:
    raise UnpackError("empty_file")
  if data[:2] == b"\x1f\x8b":  # still gzip when the file name did not say so
    try:
      data = decompress(data, "gzip", limits)
    except DecompressionBomb:
      raise UnpackError("decompression_bomb") from None
    except (OSError, EOFError, zlib.error):
      raise UnpackError("broken_gzip") from None
  if not tarfile.is_tarfile(io.BytesIO(data)):
    return {f"{paper_id}.tex": data}
  files = {}
  try:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
      for member in tar:
        if member.isfile():
          if member.size > limits.max_member_bytes:
            raise UnpackError("decompression_bomb")
          files[posixpath.normpath(member.name)] = tar.extractfile(member).read()
  except (tarfile.TarError, EOFError, OSError, zlib.error):
    raise UnpackError("broken_archive") from None
  return files


def decode_tex(data: bytes) -> str:
  try:
    return data.decode("utf-8")
  except UnicodeDecodeError:
    return data.decode("latin-1")


def strip_comments(text: str) -> str:
  """Removes `%` comments, keeping `\\%`; a line that held only a comment is removed entirely."""
  lines = []
  for line in text.split("\n"):
    kept = _COMMENT.sub(r"\1", line)
    if kept != line:
      kept = kept.rstrip()
    if kept.strip() or not line.strip():
      lines.append(kept)
  return "\n".join(lines)


def is_main_file(text: str) -> bool:
  """Whether a comment-free .tex text is a complete document."""
  return bool(_DOCUMENTCLASS.search(text)) and bool(_BEGIN_DOCUMENT.search(text))


class Inlined(NamedTuple):
  text: str
  inlined: int
  missing: int
  cyclic: int


def inline_inputs(files: dict[str, bytes], main: str) -> Inlined:
  """The main file with comments removed and its \\input / \\include files inlined recursively."""
  directory = posixpath.dirname(main)
  tally = {"inlined": 0, "missing": 0, "cyclic": 0}

  def resolve(name: str) -> str | None:
    path = posixpath.normpath(posixpath.join(directory, name.strip()))
    for candidate in (path, path + ".tex"):
      if candidate in files:
        return candidate
    return None

  def expand(path: str, stack: tuple[str, ...]) -> str:
    def replace(match: re.Match) -> str:
      target = resolve(match.group(1) if match.group(1) is not None else match.group(2))
      if target is None:
        tally["missing"] += 1
        return ""
      if target in stack:
        tally["cyclic"] += 1
        return ""
      tally["inlined"] += 1
      return expand(target, (*stack, target))

    return _INPUT.sub(replace, strip_comments(decode_tex(files[path])))

  text = expand(main, (main,))
  return Inlined(text, tally["inlined"], tally["missing"], tally["cyclic"])


def find_main_file(files: dict[str, bytes]) -> tuple[str, Inlined] | None:
  """The main .tex file and its inlined text (module docstring, step 2), or None."""
  candidates = [path for path in sorted(files) if path.lower().endswith(".tex")
                and is_main_file(strip_comments(decode_tex(files[path])))]
  if not candidates:
    return None
  depth = min(path.count("/") for path in candidates)
  inlined = {path: inline_inputs(files, path) for path in candidates if path.count("/") == depth}
  main = min(inlined, key=lambda path: (-len(inlined[path].text), path))
  return main, inlined[main]


def read_paper(data: bytes, path: str) -> Document | Drop | Malformed:
  """One input file as a Document holding its whole inlined source, comments removed."""
  paper_id = arxiv_id(path)
  try:
    files = unpack(data, paper_id)
  except UnpackError as error:
    return Malformed(str(error), path)
  found = find_main_file(files)
  if found is None:
    return Drop("no_main_tex")
  main, inlined = found
  return Document(id=paper_id, source=SOURCE, text=inlined.text, metadata={
      "arxiv_id": paper_id, "path": path, "main_file": main, "inlined_files": inlined.inlined,
      "missing_inputs": inlined.missing, "cyclic_inputs": inlined.cyclic})


def split_at_first_section(text: str) -> tuple[str, str] | None:
  """(everything before the first \\section of the document, the rest up to \\end{document})."""
  begin = _BEGIN_DOCUMENT.search(text)
  section = _SECTION.search(text, begin.end() if begin else 0)
  if section is None:
    return None
  end = _END_DOCUMENT.search(text, section.start())
  return text[:section.start()], text[section.start():end.start() if end else len(text)]


def remove_bibliography(text: str) -> str:
  return _BIBLIOGRAPHY_COMMANDS.sub("", _BIBLIOGRAPHY_ENV.sub("", text))


class Macro(NamedTuple):
  parameters: int
  default: str | None  # the optional first argument's default; None when it has none
  body: str


def _skip_spaces(text: str, pos: int) -> int:
  while pos < len(text) and text[pos].isspace():
    pos += 1
  return pos


def _read_balanced(text: str, pos: int, close: str) -> tuple[str, int]:
  """The text from the opening bracket at `pos` to its `close` at brace depth 0, and the end."""
  depth, i = 0, pos + 1
  while i < len(text):
    char = text[i]
    if char == "\\":
      i += 2
      continue
    if char == close and depth == 0:
      return text[pos + 1:i], i + 1
    if char == "{":
      depth += 1
    elif char == "}":
      depth -= 1
      if depth < 0:
        raise TexError("unbalanced_braces")
    i += 1
  raise TexError("unbalanced_braces")


def _read_argument(text: str, pos: int) -> tuple[str, int]:
  """One undelimited TeX argument: a braced group (braces removed) or a single token."""
  pos = _skip_spaces(text, pos)
  if pos >= len(text):
    raise TexError("missing_argument")
  if text[pos] == "{":
    return _read_balanced(text, pos, "}")
  if text[pos] == "}":
    raise TexError("unbalanced_braces")
  if text[pos] == "\\":
    token = _DEFINITION_NAME.match(text, pos)
    if token is None:
      raise TexError("missing_argument")
    return token.group(), token.end()
  return text[pos], pos + 1


def _read_newcommand(text: str, pos: int) -> tuple[str, Macro | None, int]:
  """A \\newcommand-style definition after the command name: (name, macro or None, end)."""
  if text.startswith("*", pos):
    pos += 1
  name, pos = _read_argument(text, pos)
  name = name.strip()
  parameters, default = 0, None
  pos = _skip_spaces(text, pos)
  if text.startswith("[", pos):
    number, pos = _read_balanced(text, pos, "]")
    parameters = int(number) if number.strip().isdigit() else -1
    pos = _skip_spaces(text, pos)
    if text.startswith("[", pos):
      default, pos = _read_balanced(text, pos, "]")
  body, pos = _read_argument(text, pos)
  supported = 0 <= parameters <= 9 and re.fullmatch(r"\\[A-Za-z]+", name)
  return name, Macro(parameters, default, body) if supported else None, pos


def _read_def(text: str, pos: int) -> tuple[str, Macro | None, int]:
  """A \\def definition after `\\def`: (name, macro or None for delimited parameters, end)."""
  pos = _skip_spaces(text, pos)
  token = _DEFINITION_NAME.match(text, pos)
  if token is None:
    raise TexError("missing_argument")
  brace = text.find("{", token.end())
  if brace < 0:
    raise TexError("unbalanced_braces")
  parameter_text = text[token.end():brace]
  body, end = _read_balanced(text, brace, "}")
  numbers = parameter_text[1::2]
  undelimited = (re.fullmatch(r"(?:#[1-9])*", parameter_text) is not None
                 and numbers == "123456789"[:len(numbers)])
  if not undelimited or not re.fullmatch(r"\\[A-Za-z]+", token.group()):
    return token.group(), None, end
  return token.group(), Macro(len(numbers), None, body), end


def _apply(macro: Macro, text: str, pos: int) -> tuple[str, int]:
  """The expansion of a use of `macro` whose arguments start at `pos`, and where the use ends."""
  arguments = []
  required = macro.parameters
  if macro.default is not None:
    after = _skip_spaces(text, pos)
    if text.startswith("[", after):
      optional, pos = _read_balanced(text, after, "]")
    else:
      optional = macro.default
    arguments.append(optional)
    required -= 1
  for _ in range(required):
    argument, pos = _read_argument(text, pos)
    arguments.append(argument)

  def substitute(match: re.Match) -> str:
    if match.group(1) == "#":
      return "#"
    number = int(match.group(1))
    return arguments[number - 1] if number <= len(arguments) else match.group()

  return _PARAMETER.sub(substitute, macro.body), pos


@dataclasses.dataclass
class MacroExpansion:
  text: str
  macros: dict[str, Macro]
  defined: int = 0
  expanded: int = 0
  unsupported: int = 0


def expand_macros(text: str, macros: dict[str, Macro] | None = None, expand: bool = True,
                  max_expansions: int = DEFAULT_MAX_EXPANSIONS) -> MacroExpansion:
  """Removes macro definitions from `text` and, with `expand`, expands the uses of user macros.

  Scans left to right as TeX does: a definition takes effect where it stands, and each expansion
  is scanned again. `macros` (not changed) are the definitions in effect at the start; the
  result holds those in effect at the end. Raises TexError for what cannot be parsed.
  """
  result = MacroExpansion("", dict(macros or {}))
  pieces, done, pos = [], 0, 0
  while (match := _CONTROL.search(text, pos)) is not None:
    name = match.group(1)
    if name in _DEFINERS:
      read = _read_def if name in ("def", "gdef") else _read_newcommand
      defined, macro, end = read(text, match.end())
      if macro is None:
        result.macros.pop(defined, None)
        result.unsupported += 1
      elif name != "providecommand" or defined not in result.macros:
        result.macros[defined] = macro
        result.defined += 1
      pieces.append(text[done:match.start()])
      done = pos = end
    elif expand and f"\\{name}" in result.macros:
      if result.expanded >= max_expansions:
        raise TexError("macro_expansion_limit")
      macro = result.macros[f"\\{name}"]
      replacement, end = _apply(macro, text, match.end())
      if macro.parameters == 0 and text.startswith("{}", end):
        end += 2  # `\name{}` only ends the control word; the empty group is no text
      result.expanded += 1
      pieces.append(text[done:match.start()])
      # A control word directly followed by a letter would change its name; TeX keeps them
      # apart, and so must the text.
      separator = " " if re.search(r"\\[A-Za-z]+$", replacement) and text[end:end + 1].isalpha() \
          else ""
      text = replacement + separator + text[end:]
      done = pos = 0
    else:
      pos = match.end()
  pieces.append(text[done:])
  result.text = "".join(pieces)
  return result


def collapse_blank_lines(text: str) -> str:
  return _BLANK_LINES.sub("\n\n", text).strip()


def has_prose(text: str) -> bool:
  """Whether a letter is left once headings, references and control sequences are removed."""
  return re.search(r"[^\W\d_]", _NOT_PROSE.sub(" ", text)) is not None


def clean_paper(doc: Document, max_expansions: int = DEFAULT_MAX_EXPANSIONS,
                ) -> Document | Drop | Malformed:
  """Steps 5-8 of the module docstring on a Document from `read_paper`."""
  parts = split_at_first_section(doc.text)
  if parts is None:
    return Drop("no_section")
  preamble, body = parts
  try:
    defined = expand_macros(preamble, expand=False)
    expanded = expand_macros(remove_bibliography(body), defined.macros,
                             max_expansions=max_expansions)
  except TexError as error:
    return Malformed(str(error), doc.metadata.get("path", doc.id))
  text = collapse_blank_lines(expanded.text)
  if not has_prose(text):
    return Drop("empty")
  return dataclasses.replace(doc, text=text, metadata={
      **doc.metadata, "macros_defined": defined.defined + expanded.defined,
      "macros_expanded": expanded.expanded,
      "macros_unsupported": defined.unsupported + expanded.unsupported})


def _counted(item: Document | Drop | Malformed) -> Iterable[Document]:
  if isinstance(item, Malformed):
    report_malformed(item.reason, item.where)
  elif isinstance(item, Drop):
    count(f"dropped/{item.reason}")
  else:
    yield item


def _clean_counted(doc: Document, max_expansions: int) -> Iterable[Document]:
  yield from _counted(clean_paper(doc, max_expansions))


def _read_file(readable) -> Iterable[Document]:
  path = readable.metadata.path
  # Raw bytes: `unpack` decompresses gzip itself, so a truncated stream is reported rather than
  # read as a shorter file, and a gzip that arXiv served without a .gz name is still read.
  with readable.open(compression_type=CompressionTypes.UNCOMPRESSED) as stream:
    data = stream.read()
  paper = read_paper(data, path)
  if not isinstance(paper, Malformed):
    count("documents_read")
  if isinstance(paper, Document) and paper.metadata["missing_inputs"]:
    count("arxiv_missing_inputs", paper.metadata["missing_inputs"])
  yield from _counted(paper)
  if wiring.progress_bar is not None:
    wiring.progress_bar.update(readable.metadata.size_in_bytes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group("arxiv")
  group.add_argument("--arxiv_max_expansions", type=int, default=DEFAULT_MAX_EXPANSIONS,
                     help="macro expansions per paper beyond which the paper is reported "
                          "malformed (a recursive macro never ends) (--source=arxiv)")


def check_arguments(args: argparse.Namespace) -> list[str]:
  if args.arxiv_max_expansions < 1:
    return [f"--arxiv_max_expansions={args.arxiv_max_expansions}: must be at least 1"]
  return []


def build(pipeline: beam.Pipeline, args: argparse.Namespace) -> beam.PCollection:
  max_expansions = args.arxiv_max_expansions
  return (pipeline
          | "ReadPapers" >> ReadFiles(args.input, _read_file)
          | "CleanPapers" >> beam.FlatMap(_clean_counted, max_expansions))
