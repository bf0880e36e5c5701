"""Preprocessing throughput: python -m benchmarks.preprocessing [--size_mb=100] [--sample=2000]
    [--sources=ccnet,c4,github,wikipedia,books,arxiv,stackexchange]

For CommonCrawl sources, generates a synthetic WET file of about --size_mb of page text
(preprocessing.testing.synthetic_web) and toy CCNet models; for the others, inputs in their raw
formats from preprocessing.testing.synthetic_<source>. Prints one JSON object per measurement:
  - each CCNet and C4 filter alone on --sample documents in this process: documents/s on one core;
  - each whole pipeline (`preprocessing.run`, DirectRunner, one worker): documents read (input
    documents) per second of wall time on one core.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import platform
import random
import tempfile
import time
from pathlib import Path

from preprocessing import c4, run
from preprocessing.ccnet.language_id import LanguageIdentifier, min_length
from preprocessing.ccnet.normalize import line_hash
from preprocessing.ccnet.perplexity import PerplexityScorer
from preprocessing.ccnet.reference_classifier import ReferenceFilter
from preprocessing.document import Document, Drop
from preprocessing.testing import synthetic_web
from preprocessing.wet import wet_bytes


def _machine() -> dict:
  return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}


def _emit(record: dict) -> None:
  print(json.dumps({"benchmark": "preprocessing", **record, **_machine()}), flush=True)


def _hash_lines(doc: Document) -> Document:
  """The per-document work of CCNet's dedup (the grouping is the pipeline's)."""
  for line in doc.text.split("\n"):
    line_hash(line)
  return doc


def _time_filter(name: str, keep_or_drop, docs: list[Document]) -> None:
  copies = [Document(d.id, d.source, d.text, dict(d.metadata)) for d in docs]
  keep_or_drop(copies[0])  # loads any model before the clock starts
  start = time.perf_counter()
  kept = sum(not isinstance(keep_or_drop(doc), Drop) for doc in copies)
  seconds = time.perf_counter() - start
  _emit({"stage": name, "documents": len(docs), "kept": kept, "seconds": round(seconds, 3),
         "documents_per_s_per_core": round(len(docs) / seconds, 1)})


# Input sizes for the sources with their own raw formats: about a minute of pipeline each.
OTHER_SOURCES = {"github": 20000, "wikipedia": 5000, "books": 300, "arxiv": 1000,
                 "stackexchange": 20000}


def _run_pipeline(source: str, input_glob: str, output: Path, extra: list[str]) -> dict:
  start = time.perf_counter()
  stats = run.main([f"--source={source}", f"--input={input_glob}", f"--output={output}",
                    "--direct_num_workers=1", *extra])
  seconds = time.perf_counter() - start
  _emit({"stage": f"{source}/pipeline", "documents": stats["documents_read"],
         "written": stats["documents_written"], "seconds": round(seconds, 1),
         "documents_per_s_per_core": round(stats["documents_read"] / seconds, 1),
         "dropped": stats["dropped"], "malformed": stats["malformed"]})
  return stats


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--size_mb", type=float, default=100.0)
  parser.add_argument("--sample", type=int, default=2000)
  parser.add_argument("--sources", default=",".join(["ccnet", "c4", *OTHER_SOURCES]))
  parser.add_argument("--workdir", default=None, help="kept if given; a temporary one otherwise")
  args = parser.parse_args(argv)
  workdir = Path(args.workdir or tempfile.mkdtemp(prefix="preprocessing_bench_"))
  workdir.mkdir(parents=True, exist_ok=True)
  sources = args.sources.split(",")
  if {"ccnet", "c4"} & set(sources):
    _benchmark_web(args, workdir, sources)
  for source in sources:
    if source in OTHER_SOURCES:
      generator = importlib.import_module(f"preprocessing.testing.synthetic_{source}")
      input_glob = generator.write_sample_input(workdir / f"{source}_input", OTHER_SOURCES[source])
      _run_pipeline(source, input_glob, workdir / source, [])


def _benchmark_web(args: argparse.Namespace, workdir: Path, sources: list[str]) -> None:
  """CCNet and C4 on one synthetic WET file: each filter alone, then the chosen pipelines."""
  rng = random.Random(0)
  pages, size = [], 0
  while size < args.size_mb * 1e6:
    batch = synthetic_web.pages(rng, 1000)
    pages += [(f"{url}#{len(pages) + i}", text) for i, (url, text) in enumerate(batch)]
    size += sum(len(text.encode()) for _, text in batch)
  wet = workdir / "synthetic.warc.wet.gz"
  wet.write_bytes(wet_bytes(pages))
  _emit({"stage": "input", "documents": len(pages), "text_mb": round(size / 1e6, 1),
         "wet_gz_mb": round(wet.stat().st_size / 1e6, 1)})

  models = synthetic_web.train_ccnet_models(workdir)
  sample = [Document(id=url, source="bench", text=text) for url, text in pages[:args.sample]]
  for doc in sample:
    doc.metadata["language"] = "en"
  bad_words = c4.load_bad_words(c4.DEFAULT_BAD_WORDS)
  filters = {
      "ccnet/line_hashes": _hash_lines,
      "ccnet/min_length": min_length,
      "ccnet/language_id": LanguageIdentifier(models["--lid_model"]),
      "ccnet/perplexity": PerplexityScorer(models["--lm_model"], models["--spm_model"],
                                           keep_buckets=("head", "middle", "tail")),
      "ccnet/reference": ReferenceFilter(models["--reference_model"]),
      "c4/clean_lines": c4.clean_lines,
      "c4/min_sentences": c4.min_sentences,
      "c4/bad_words": functools.partial(c4.bad_words_filter, bad_words=bad_words),
      "c4/english (langdetect)": c4.english_filter,
  }
  for name, keep_or_drop in filters.items():
    _time_filter(name, keep_or_drop, sample)

  model_flags = [f"{k}={v}" for k, v in models.items()]
  for source, extra in (("ccnet", model_flags), ("c4", [])):
    if source in sources:
      _run_pipeline(source, str(wet), workdir / source, extra)


if __name__ == "__main__":
  main()
