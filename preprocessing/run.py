"""python -m preprocessing.run --source=NAME --input=GLOB --output=DIR [--runner=DirectRunner] [...]

Runs one source's Beam pipeline and writes JSONL shards plus `stats.json` (documents in and out,
every drop by reason) to DIR. Flags this program does not know are Beam pipeline options
(`--runner=DataflowRunner --project=...`, `--direct_num_workers=4`, ...), so the same command runs
on one machine or a cluster.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from tqdm import tqdm

from preprocessing import pipeline

# Each source module defines add_arguments(parser), check_arguments(args) -> list of problems
# and build(pipeline, args) -> PCollection of Documents.
SOURCES = {"ccnet": "preprocessing.ccnet.pipeline", "c4": "preprocessing.c4",
           "github": "preprocessing.github", "wikipedia": "preprocessing.wikipedia",
           "books": "preprocessing.books", "arxiv": "preprocessing.arxiv",
           "stackexchange": "preprocessing.stackexchange"}


def _parser(source: str | None) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m preprocessing.run", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--source", required=True, choices=sorted(SOURCES))
  parser.add_argument("--input", required=True, help="glob of input files (local or gs://...)")
  parser.add_argument("--output", required=True, help="directory for the shards and stats.json")
  parser.add_argument("--compression", default="gzip",
                      choices=sorted(pipeline.WriteDocuments.SUFFIXES))
  parser.add_argument("--num_shards", type=int, default=0, help="0 lets the runner choose")
  if source in SOURCES:  # only the chosen source's options, so --help stays readable
    importlib.import_module(SOURCES[source]).add_arguments(parser)
  return parser


def input_bytes(pattern: str) -> int:
  matches = FileSystems.match([pattern])[0].metadata_list
  if not matches:
    raise SystemExit(f"error: no files match --input={pattern}")
  return sum(m.size_in_bytes for m in matches)


def main(argv: list[str] | None = None) -> dict:
  source_only = argparse.ArgumentParser(add_help=False)
  source_only.add_argument("--source")
  parser = _parser(source_only.parse_known_args(argv)[0].source)
  args, beam_args = parser.parse_known_args(argv)
  source = importlib.import_module(SOURCES[args.source])
  if problems := source.check_arguments(args):
    parser.error("\n  ".join(problems))
  total_bytes = input_bytes(args.input)
  options = PipelineOptions(beam_args)
  runner = options.view_as(StandardOptions).runner or "DirectRunner"
  in_process = (runner == "DirectRunner"
                and options.view_as(DirectOptions).direct_running_mode in (None, "in_memory"))

  started = time.time()
  if not FileSystems.exists(args.output):
    FileSystems.mkdirs(args.output)
  with tqdm(total=total_bytes, unit="B", unit_scale=True, desc=f"{args.source} input",
            disable=not in_process) as bar:
    pipeline.progress_bar = bar if in_process else None
    try:
      root = beam.Pipeline(options=options)
      try:
        docs = source.build(root, args)
      except (FileNotFoundError, ValueError) as error:  # models and lists named by flags
        parser.error(str(error))
      docs | "Write" >> pipeline.WriteDocuments(args.output, args.compression, args.num_shards)
      result = root.run()
      result.wait_until_finish()
    finally:
      pipeline.progress_bar = None

  stats = {"source": args.source, "input": args.input, "output": args.output, "runner": runner,
           "seconds": round(time.time() - started, 1), **pipeline.collect_stats(result),
           "settings": {k: v for k, v in sorted(vars(args).items())
                        if k not in ("source", "input", "output")}}
  path = pipeline.write_stats(stats, args.output)
  print(f"{args.source}: {stats['documents_read']} documents read, "
        f"{stats['documents_written']} written, dropped {sum(stats['dropped'].values())} "
        f"{stats['dropped']}, malformed {stats['malformed']}; stats in {path}", file=sys.stderr)
  return stats


if __name__ == "__main__":
  main()
