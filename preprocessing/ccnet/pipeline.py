"""`--source=ccnet`: CommonCrawl WET files through CCNet, plus the LLaMA paper's reference filter.

Order (cc_net mine.py, then the paper's extra step):
  1. line deduplication across the whole input, removing every copy of a repeated line;
  2. documents shorter than 300 characters dropped;
  3. fastText language identification, keeping English scored >= 0.5;
  4. KenLM perplexity on SentencePiece pieces, keeping the head and middle buckets;
  5. a fastText classifier of pages cited by Wikipedia vs random pages, keeping references.
Steps 4 and 5 need models the user trains (preprocessing.ccnet.train_lm,
preprocessing.ccnet.train_reference_classifier); leaving one out takes `--skip`, and the run's
stats.json records it.
"""

from __future__ import annotations

import argparse
import functools

import apache_beam as beam

from preprocessing.ccnet.language_id import LanguageIdentifier, min_length
from preprocessing.ccnet.normalize import line_hash
from preprocessing.ccnet.perplexity import PerplexityScorer, parse_cutoffs
from preprocessing.ccnet.reference_classifier import ReferenceFilter
from preprocessing.pipeline import ApplyFilters, DeduplicateLines, read_wet_files

OPTIONAL_STEPS = ("perplexity", "reference")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  group = parser.add_argument_group("ccnet")
  group.add_argument("--lid_model",
                     help="fastText language-id model (lid.176.bin from fasttext.cc)")
  group.add_argument("--lid_threshold", type=float, default=0.5, help="cc_net's default 0.5")
  group.add_argument("--min_length", type=int, default=300,
                     help="drop documents shorter than this many characters (cc_net: 300)")
  group.add_argument("--lm_model", help="KenLM model (ARPA or binary) for perplexity")
  group.add_argument("--spm_model", help="SentencePiece model the KenLM model was trained on")
  group.add_argument("--keep_buckets", default="head,middle",
                     help="perplexity buckets to keep (head, middle, tail)")
  group.add_argument("--perplexity_cutoffs", default="en:340:520",
                     help="LANG:HEAD_MAX:MIDDLE_MAX,... (cc_net cutoff.csv, 30th/60th percentile)")
  group.add_argument("--reference_model", help="fastText model from train_reference_classifier")
  group.add_argument("--reference_threshold", type=float, default=0.5)
  group.add_argument("--skip", default="", help=f"steps to leave out, from {OPTIONAL_STEPS}")


def check_arguments(args: argparse.Namespace) -> list[str]:
  """Problems with the ccnet arguments, each naming the flag and the fix."""
  skipped = set(filter(None, args.skip.split(",")))
  problems = [f"--skip={name}: unknown step; choose from {OPTIONAL_STEPS}"
              for name in sorted(skipped - set(OPTIONAL_STEPS))]
  needed = {"--lid_model": args.lid_model}
  if "perplexity" not in skipped:
    needed.update({"--lm_model": args.lm_model, "--spm_model": args.spm_model})
  if "reference" not in skipped:
    needed["--reference_model"] = args.reference_model
  problems += [f"{flag} is required for --source=ccnet (or --skip the step that needs it)"
               for flag, value in needed.items() if not value]
  return problems


def build(pipeline: beam.Pipeline, args: argparse.Namespace) -> beam.PCollection:
  skipped = set(filter(None, args.skip.split(",")))
  filters = [functools.partial(min_length, min_chars=args.min_length),
             LanguageIdentifier(args.lid_model, keep_languages=("en",),
                                threshold=args.lid_threshold)]
  if "perplexity" not in skipped:
    filters.append(PerplexityScorer(args.lm_model, args.spm_model,
                                    keep_buckets=tuple(args.keep_buckets.split(",")),
                                    cutoffs=parse_cutoffs(args.perplexity_cutoffs)))
  if "reference" not in skipped:
    filters.append(ReferenceFilter(args.reference_model, threshold=args.reference_threshold))
  return (pipeline
          | "ReadWet" >> read_wet_files(args.input, source="ccnet")
          | "DedupLines" >> DeduplicateLines(line_hash, keep_first=False, reason="duplicate")
          | "Filters" >> beam.ParDo(ApplyFilters(filters)))
