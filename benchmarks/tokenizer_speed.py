"""Tokenizer throughput beside SentencePiece's own: python -m benchmarks.tokenizer_speed
    [--size_mb=20] [--threads=1,2] [--passes=3] [--seed=0]

Builds about --size_mb of text, the same for a seed: documents of 1 to 40 paragraphs drawn from
the repository's Markdown files, every digit redrawn and one paragraph in ten followed by a line of
another script. Cuts it into tokenize_shards' batches (BATCH_CHARS of text, as beam.BatchElements
forms them). For each --threads count, pins the process to that many of its cores
(os.sched_setaffinity), then --passes times over the batches, a round a batch, has each side
encode the round's batch with EOS (as tokenize_shards does), the order rotated every round:
  - sentencepiece: SentencePieceProcessor.encode(texts, num_threads=THREADS), the reference;
  - batch: Tokenizer.encode_batch(texts, num_threads=THREADS);
  - one_by_one: Tokenizer.encode of each text, the way tokenize_shards used to encode;
  - dofn: tokenize_shards.TokenizeDocuments.process to shard records (no Beam runner), on as
    many threads as it takes by default: the cores pinned.
Prints one JSON line per side and round, then per side the median over rounds of its tokens/s
over sentencepiece's in the same round: rounds of a few seconds, next to each other, so that a
load from elsewhere on the machine weighs on the sides of a round alike. Exits 1 if a side's ids
differ from sentencepiece's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sentencepiece as spm

from llama_jax.tokenizer import Tokenizer
from preprocessing import tokenize_shards
from preprocessing.document import Document

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "tests" / "data" / "llama-tokenizer" / "tokenizer.model"
OTHER_SCRIPTS = ["日本語の文章と中文的句子。", "Русский текст, ещё немного.", "Ελληνικά και עברית",
                 "العربية والهندية हिन्दी", "emoji 🦙🎉 👩‍👩‍👧", "e\u0301 \ufb01 \u00a0nbsp"]


def corpus(size_bytes: int, seed: int) -> list[str]:
  """Documents totalling at least `size_bytes` of UTF-8 (see the module's docstring)."""
  paragraphs = [p for path in sorted(ROOT.glob("*.md")) + sorted(ROOT.glob("docs/**/*.md"))
                + sorted(ROOT.glob("examples/**/*.md"))
                for p in path.read_text(encoding="utf-8").split("\n\n") if p.strip()]
  rng = random.Random(seed)
  documents, size = [], 0
  while size < size_bytes:
    drawn = []
    for paragraph in rng.choices(paragraphs, k=rng.randint(1, 40)):
      paragraph = re.sub(r"\d", lambda _: str(rng.randrange(10)), paragraph)
      drawn.append(paragraph + "\n" + rng.choice(OTHER_SCRIPTS) if rng.random() < 0.1
                   else paragraph)
    documents.append("\n\n".join(drawn))
    size += len(documents[-1].encode("utf-8"))
  return documents


def batches_of(docs: list[Document], batch_chars: int) -> list[list[Document]]:
  """beam.BatchElements' batches for min = max = batch_chars, sized by text length (less the
  empty batch it gives before a document over batch_chars)."""
  batches, batch, chars = [], [], 0
  for doc in docs:
    if batch and chars + len(doc.text) > batch_chars:
      batches.append(batch)
      batch, chars = [], 0
    batch.append(doc)
    chars += len(doc.text)
  return batches + [batch] if batch else batches


def _as_is(ids: list[list[int]]) -> list[list[int]]:
  return ids


def sides(threads: int) -> dict[str, tuple[Callable, Callable]]:
  """Each side's timed run on a batch of Documents, and how to read every document's ids with
  EOS from what it gave."""
  reference = spm.SentencePieceProcessor(model_file=str(MODEL))
  tokenizer = Tokenizer(MODEL)
  tokenize = tokenize_shards.TokenizeDocuments(str(MODEL), num_shards=1)
  tokenize.setup()
  return {
      "sentencepiece": (lambda docs: reference.encode([d.text for d in docs], add_eos=True,
                                                      num_threads=threads), _as_is),
      "batch": (lambda docs: tokenizer.encode_batch([d.text for d in docs], eos=True,
                                                    num_threads=threads), _as_is),
      "one_by_one": (lambda docs: [tokenizer.encode(d.text, eos=True) for d in docs], _as_is),
      # One shard, no empty text: the records come in the documents' order.
      "dofn": (lambda docs: [record for _, record in tokenize.process(docs)],
               lambda records: [np.frombuffer(data, tokenize.dtype).tolist()
                                for _, data in records]),
  }


def _emit(record: dict) -> None:
  machine = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
             "sentencepiece": spm.__version__}
  print(json.dumps({"benchmark": "tokenizer_speed", **record, **machine}), flush=True)


def measure(batches: list[list[Document]], threads: int, passes: int) -> bool:
  """Times every side on `threads` cores; prints the measurements; False if ids differed."""
  runs = sides(threads)
  names = list(runs)
  ratios: dict[str, list[float]] = {name: [] for name in names}
  for round_ in range(passes * len(batches)):
    speed, ids = {}, {}
    turn = round_ % len(names)
    for name in names[turn:] + names[:turn]:
      run, ids_of = runs[name]
      start, start_cpu = time.perf_counter(), time.process_time()
      output = run(batches[round_ % len(batches)])
      seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
      ids[name] = ids_of(output)
      tokens = sum(map(len, ids[name]))
      speed[name] = tokens / seconds
      _emit({"job": "measure", "side": name, "threads": threads, "tokens": tokens,
             "seconds": round(seconds, 3), "cpu_seconds": round(cpu_seconds, 3),
             "tokens_per_s": round(speed[name]), "round": round_})
    for name in names:
      if ids[name] != ids["sentencepiece"]:
        _emit({"job": "error", "side": name, "threads": threads, "round": round_,
               "error": "ids differ from sentencepiece's"})
        return False
      ratios[name].append(speed[name] / speed["sentencepiece"])
  for name in names:
    _emit({"job": "summary", "side": name, "threads": threads, "rounds": len(ratios[name]),
           "median_ratio_to_sentencepiece": round(statistics.median(ratios[name]), 3),
           "ratios": [round(r, 3) for r in ratios[name]]})
  return True


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.tokenizer_speed",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--size_mb", type=float, default=20.0, help="text to encode, in MB")
  parser.add_argument("--threads", default="1,2", help="comma-separated core counts to pin to")
  parser.add_argument("--passes", type=int, default=3, help="times over the corpus")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  cores = sorted(os.sched_getaffinity(0))
  counts = [int(t) for t in args.threads.split(",")]
  if not all(1 <= t <= len(cores) for t in counts):
    parser.error(f"--threads={args.threads}: this process may run on {len(cores)} cores")
  texts = corpus(int(args.size_mb * 1e6), args.seed)
  batches = batches_of([Document(str(i), "", text) for i, text in enumerate(texts)],
                       tokenize_shards.BATCH_CHARS)
  _emit({"job": "corpus", "documents": len(texts), "batches": len(batches),
         "bytes": sum(len(t.encode("utf-8")) for t in texts)})
  for threads in counts:
    os.sched_setaffinity(0, cores[:threads])
    if not measure(batches, threads, args.passes):
      raise SystemExit(1)


if __name__ == "__main__":
  main()
