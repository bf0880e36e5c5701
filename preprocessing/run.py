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

from apache_beam.io.filesystems import FileSystems

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
  parser.add_argument("--output_format", default="jsonl", choices=("jsonl", "tfds"),
                      help="jsonl: documents-*.jsonl.gz shards in --output; tfds: the TFDS "
                      "dataset llama_corpus/SOURCE in the TFDS data_dir --output, stats.json "
                      "beside its dataset_info.json (preprocessing.tfds_output)")
  parser.add_argument("--compression", choices=sorted(pipeline.WriteDocuments.SUFFIXES),
                      help="of the JSONL shards (default gzip)")
  parser.add_argument("--num_shards", type=int, default=0, help="0 lets the runner choose")
  if source in SOURCES:  # only the chosen source's options, so --help stays readable
    importlib.import_module(SOURCES[source]).add_arguments(parser)
  return parser


def main(argv: list[str] | None = None) -> dict:
  source_only = argparse.ArgumentParser(add_help=False)
  source_only.add_argument("--source")
  parser = _parser(source_only.parse_known_args(argv)[0].source)
  args, beam_args = parser.parse_known_args(argv)
  source = importlib.import_module(SOURCES[args.source])
  if problems := source.check_arguments(args):
    parser.error("\n  ".join(problems))
  if args.output_format == "tfds":
    if args.compression:
      parser.error("--compression is for --output_format=jsonl; a TFDS dataset's ArrayRecord "
                   "shards are compressed by ArrayRecord")
    from preprocessing import tfds_output  # TFDS loads only when asked for

    written_to = tfds_output.dataset_dir(args.output, args.source)
    output_names = tfds_output.OUTPUT_NAMES
    write = tfds_output.WriteTfdsDataset(args.output, args.source, args.num_shards)
  else:
    args.compression = args.compression or "gzip"
    written_to, output_names = args.output, pipeline.WriteDocuments.OUTPUT_NAMES
    write = pipeline.WriteDocuments(args.output, args.compression, args.num_shards)

  def build(root):
    if not FileSystems.exists(written_to):
      FileSystems.mkdirs(written_to)
    try:
      docs = source.build(root, args)
    except (FileNotFoundError, ValueError) as error:  # models and lists named by flags
      parser.error(str(error))
    # Once the flags are known good: a rerun into DIR starts from what a clean run would see.
    pipeline.remove_previous_outputs(written_to, output_names, args.input)
    docs | "Write" >> write

  run = pipeline.run_pipeline(beam_args, args.input, f"{args.source} input", build)
  stats = {"source": args.source, "input": args.input, "output": written_to, **run,
           "settings": {k: v for k, v in sorted(vars(args).items())
                        if k not in ("source", "input", "output")}}
  path = pipeline.write_stats(stats, written_to)
  print(f"{args.source}: {stats['documents_read']} documents read, "
        f"{stats['documents_written']} written, dropped {sum(stats['dropped'].values())} "
        f"{stats['dropped']}, malformed {stats['malformed']}; stats in {path}", file=sys.stderr)
  return stats


if __name__ == "__main__":
  main()
