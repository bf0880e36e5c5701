"""Synthetic arXiv source files as arXiv serves them, for tests and benchmarks of --source=arxiv.

`write_sample_input(directory, count, seed)` writes `count` papers, one file each, cycling through
KINDS so that the outcome of each kind (KIND_OUTCOMES) is known for any count: tar.gz archives with
sections in subdirectories, figures and a .bib file; plain .tar archives holding a second
complete document (a response letter); single gzipped .tex files; and the cases the rules remove
or report: no main file, no \\section, nothing but headings, unbalanced braces in a macro
definition, a truncated archive.
"""

from __future__ import annotations

import gzip
import io
import pathlib
import random
import tarfile

WORDS = ("model", "data", "training", "loss", "we", "show", "that", "the", "method", "improves",
         "results", "on", "benchmark", "tasks", "with", "fewer", "parameters", "and", "a",
         "simple", "objective", "our", "approach", "scales", "to", "large", "corpora", "in",
         "practice", "experiments", "confirm", "theory", "bound", "holds", "for", "all", "inputs")

PREAMBLE = r"""\documentclass[11pt]{article}
\usepackage{amsmath,amssymb,graphicx}
% Macros used throughout the paper.
\newcommand{\R}{\mathbb{R}}
\newcommand{\norm}[1]{\left\|#1\right\|}
\newcommand{\pair}[2][x]{(#1, #2)}
\newcommand*{\LLM}{large language model}
\def\vect#1{\mathbf{#1}}
\def\loss{\mathcal{L}(\vect{\theta})}
\title{A Study of Scaling}
\author{A. Author \and B. Author}
"""

BIBLIOGRAPHY = r"""\bibliographystyle{plain}
\bibliography{refs}
"""

THEBIBLIOGRAPHY = r"""\begin{thebibliography}{9}
\bibitem{smith} J. Smith. Scaling laws. 2020.
\bibitem{doe} J. Doe. Data pipelines. 2021.
\end{thebibliography}
"""

KINDS = ("tar_gz", "single_gz", "plain_tar", "missing_inputs", "no_main_tex", "no_section",
         "empty", "unbalanced_braces", "truncated")
# What the pipeline makes of each kind: "kept", or the stats entry that counts it.
KIND_OUTCOMES = {"tar_gz": "kept", "single_gz": "kept", "plain_tar": "kept",
                 "missing_inputs": "kept", "no_main_tex": "dropped/no_main_tex",
                 "no_section": "dropped/no_section", "empty": "dropped/empty",
                 "unbalanced_braces": "malformed/unbalanced_braces",
                 "truncated": "malformed/broken_gzip"}


def paper_id(index: int) -> str:
  """New-style arXiv ids, yymm.nnnnn, distinct for every index."""
  month, number = divmod(index, 99999)
  return f"{10 + month // 12:02d}{1 + month % 12:02d}.{number + 1:05d}"


def sentence(rng: random.Random) -> str:
  words = [rng.choice(WORDS) for _ in range(rng.randint(8, 16))]
  return " ".join(words).capitalize() + "."


def paragraph(rng: random.Random) -> str:
  """Prose with macro uses, a comment, an escaped percent sign and math."""
  parts = [sentence(rng) for _ in range(rng.randint(2, 4))]
  parts.insert(1, r"The \LLM{} reaches 95\% accuracy with $\norm{\vect{x}} \in \R^{n}$.")
  parts.append(rf"We minimise $\loss$ over \pair{{y}} and \pair[z]{{w}}. % TODO {rng.random():.3f}")
  return " ".join(parts)


def tar_bytes(files: dict[str, bytes], compress: bool = True) -> bytes:
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode="w") as tar:
    for name, data in files.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))
  # gzip without a time stamp, so the same seed writes the same bytes
  return gzip.compress(buffer.getvalue(), mtime=0) if compress else buffer.getvalue()


def _section(rng: random.Random, title: str) -> str:
  return f"\\section{{{title}}}\n" + "\n\n".join(paragraph(rng) for _ in range(rng.randint(1, 3)))


def _front_matter(rng: random.Random) -> str:
  return ("\\begin{document}\n\\maketitle\n\\begin{abstract}\n" + sentence(rng)
          + "\n\\end{abstract}\n")


def _figure(rng: random.Random) -> bytes:
  return b"\x89PNG\r\n\x1a\n" + rng.randbytes(256)


def paper_files(kind: str, rng: random.Random) -> tuple[str, bytes]:
  """(file name suffix, file bytes) of one paper of `kind`."""
  if kind in ("single_gz", "no_section", "unbalanced_braces"):
    preamble = PREAMBLE
    if kind == "unbalanced_braces":
      preamble += "\\newcommand{\\broken}{\\textbf{oops}\n"
    body = (_section(rng, "Introduction") + "\n" + _section(rng, "Results") + "\n"
            if kind != "no_section" else paragraph(rng) + "\n")
    tex = preamble + _front_matter(rng) + body + THEBIBLIOGRAPHY + "\\end{document}\n"
    return ".gz", gzip.compress(tex.encode(), mtime=0)
  sections = {"sections/intro.tex": _section(rng, "Introduction"),
              "sections/method.tex": _section(rng, "Method") + "\n\\input{sections/details}\n",
              "sections/details.tex": "\\subsection{Details}\n" + paragraph(rng),
              "sections/results.tex": _section(rng, "Results")}
  files = {name: text.encode() for name, text in sections.items()}
  files["figures/plot.png"] = _figure(rng)
  files["refs.bib"] = b"@article{smith, title={Scaling laws}, year={2020}}\n"
  body = "\\input{sections/intro}\n\\include{sections/method.tex}\n\\input{sections/results}\n"
  if kind == "missing_inputs":
    body += "\\input{sections/appendix}\n"
    files["sections/results.tex"] += b"\n\\input{sections/results}\n"  # includes itself
  if kind == "empty":
    body = "\\section{Introduction}\n\\input{intro_not_uploaded}\n\\section{Conclusion}\n"
  if kind != "no_main_tex":
    files["main.tex"] = (PREAMBLE + _front_matter(rng) + body + BIBLIOGRAPHY
                         + "\\end{document}\n").encode()
  if kind == "plain_tar":
    files["response.tex"] = (b"\\documentclass{letter}\n\\begin{document}\n"
                             b"We thank the reviewers.\n\\end{document}\n")
    return ".tar", tar_bytes(files, compress=False)
  archive = tar_bytes(files)
  if kind == "truncated":
    archive = archive[:len(archive) // 2]
  return ".tar.gz", archive


def write_sample_input(directory: pathlib.Path, count: int, seed: int = 0) -> str:
  """Writes `count` papers (kinds in the order of KINDS, repeating); returns the --input glob."""
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  rng = random.Random(seed)
  for index in range(count):
    suffix, data = paper_files(KINDS[index % len(KINDS)], rng)
    (directory / f"{paper_id(index)}{suffix}").write_bytes(data)
  return str(directory / "*")
