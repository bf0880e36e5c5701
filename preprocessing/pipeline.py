"""Beam wiring shared by every source: read, filter with counted drops, deduplicate, write, stats.

Filters stay plain functions (preprocessing.document.Filter); this module only connects them.
Every count is a Beam counter in the `preprocessing` namespace, so it is exact on any runner and
ends up in `stats.json`:
  documents_read, documents_written          documents entering the filters / written out
  dropped/<reason>                           documents a filter or stage removed
  malformed/<reason>                         input that could not become a document
  lines_removed/<reason>                     lines removed from documents that were kept
"""

from __future__ import annotations

import contextlib
import functools
import glob
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import BinaryIO

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics.metric import Metrics, MetricsFilter
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions
from apache_beam.portability.api import beam_provision_api_pb2
from apache_beam.runners.portability.fn_api_runner import FnApiRunner
from apache_beam.runners.portability.fn_api_runner.fn_runner import ExtendedProvisionInfo
from apache_beam.runners.portability.portable_runner import JobServiceHandle
from tqdm import tqdm

from preprocessing.decompress import CODECS, DAMAGE, damage_reason, open_decompressed
from preprocessing.document import Document, Drop, Filter
from preprocessing.wet import Malformed, read_wet

NAMESPACE = "preprocessing"
STATS_FILE = "stats.json"

# A tqdm bar over input bytes while the pipeline runs in this process (DirectRunner in memory);
# set by run_pipeline. Workers of a distributed runner never see it.
progress_bar = None


def count(name: str, amount: int = 1) -> None:
  Metrics.counter(NAMESPACE, name).inc(amount)


class ApplyFilters(beam.DoFn):
  """Runs filters in order; the first Drop ends the document and is counted by its reason."""

  def __init__(self, filters: Sequence[Filter]):
    self.filters = list(filters)

  def process(self, doc: Document) -> Iterable[Document]:
    for keep_or_drop in self.filters:
      result = keep_or_drop(doc)
      if isinstance(result, Drop):
        count(f"dropped/{result.reason}")
        return
      doc = result
    yield doc


def report_malformed(reason: str, where: str) -> None:
  """Counts input that could not become a document, and logs where it was."""
  count(f"malformed/{reason}")
  logging.warning("malformed input (%s): %s", reason, where)


@contextlib.contextmanager
def open_input(readable: fileio.ReadableFile) -> Iterator[BinaryIO]:
  """An input file, decompressed by its name: .gz, .bz2 and .zst through preprocessing.decompress,
  which raises EOFError where a truncated file ends (Beam's own readers end there quietly, so a
  cut download passed for a shorter file) and DecompressionBomb past its ratio limit; other names
  through Beam (uncompressed files as they are)."""
  path = readable.metadata.path
  if path.endswith(tuple(CODECS)):
    with readable.open(compression_type=CompressionTypes.UNCOMPRESSED) as raw:
      yield open_decompressed(raw, path)
  else:
    with readable.open() as stream:
      yield stream


def _read_wet_file(readable: fileio.ReadableFile, source: str) -> Iterable[Document]:
  path = readable.metadata.path
  with open_input(readable) as stream:
    for item in read_wet(stream, path, source):
      if isinstance(item, Malformed):
        report_malformed(item.reason, item.where)
      else:
        count("documents_read")
        yield item
  if progress_bar is not None:
    progress_bar.update(readable.metadata.size_in_bytes)


def _read_jsonl_file(readable: fileio.ReadableFile,
                     parse: Callable[[str, str], Document]) -> Iterable[Document]:
  path = readable.metadata.path
  number = 0
  try:
    with open_input(readable) as stream:
      # Beam's CompressedFile is not iterable, but reads lines.
      for number, raw in enumerate(iter(stream.readline, b""), 1):
        try:
          line = raw.decode("utf-8")
        except UnicodeDecodeError:
          report_malformed("invalid_utf8", f"{path}:{number}")
          continue
        if not line.strip():
          continue
        try:
          doc = parse(line, f"{path}:{number}")
        except ValueError as error:
          report_malformed("bad_json_record", str(error))
          continue
        count("documents_read")
        yield doc
  except DAMAGE as error:  # the lines before the cut or the bomb are kept
    report_malformed(damage_reason(error), f"{path} after line {number}: {error}")
  if progress_bar is not None:
    progress_bar.update(readable.metadata.size_in_bytes)


class ReadFiles(beam.PTransform):
  """Documents from the files matching a glob; `read_file(ReadableFile)` yields them."""

  def __init__(self, pattern: str, read_file: Callable[[fileio.ReadableFile], Iterable[Document]]):
    super().__init__()
    self.pattern, self.read_file = pattern, read_file

  def expand(self, pipeline):
    return (pipeline
            | "Match" >> fileio.MatchFiles(self.pattern)
            | "Open" >> fileio.ReadMatches()
            | "Parse" >> beam.FlatMap(self.read_file))


def read_wet_files(pattern: str, source: str) -> ReadFiles:
  """Documents from the WET files matching a glob."""
  return ReadFiles(pattern, functools.partial(_read_wet_file, source=source))


def read_jsonl_files(pattern: str, parse: Callable[[str, str], Document]) -> ReadFiles:
  """Documents from JSON-lines files; `parse(line, where)` turns one line into a Document."""
  return ReadFiles(pattern, functools.partial(_read_jsonl_file, parse=parse))


def _line_occurrences(doc: Document, line_key: Callable[[str], object]):
  for index, line in enumerate(doc.text.split("\n")):
    yield line_key(line), (doc.id, index)


def _duplicate_occurrences(key_and_places, keep_first: bool):
  _, places = key_and_places
  places = sorted(places)
  if len(places) > 1:
    yield from places[1:] if keep_first else places


def _remove_lines(id_and_groups, reason: str):
  _, groups = id_and_groups
  doc, *same_id = groups["doc"]
  if same_id:  # the same record given twice: its lines are all duplicates of each other
    count("dropped/duplicate_document_id", len(same_id))
  remove = set(groups["remove"])
  if not remove:
    yield doc
    return
  lines = doc.text.split("\n")
  kept = [line for i, line in enumerate(lines) if i not in remove]
  if not any(line.strip() for line in kept):
    count(f"dropped/all_lines_{reason}")
    return
  count(f"lines_removed/{reason}", len(lines) - len(kept))
  doc.text = "\n".join(kept)
  doc.metadata[f"lines_removed_{reason}"] = len(lines) - len(kept)
  yield doc


class DeduplicateLines(beam.PTransform):
  """Removes lines whose key occurs more than once across the whole input.

  keep_first=False removes every occurrence (CCNet's two-pass dedup, which strips boilerplate
  such as menus and cookie notices from every page); keep_first=True keeps the occurrence in the
  document with the smallest id (C4). Keys are joined back to documents by id with
  CoGroupByKey, so no runner has to hold the set of keys in memory.
  """

  def __init__(self, line_key: Callable[[str], object], keep_first: bool, reason: str):
    super().__init__()
    self.line_key, self.keep_first, self.reason = line_key, keep_first, reason

  def expand(self, docs):
    remove = (docs
              | "LineKeys" >> beam.FlatMap(_line_occurrences, self.line_key)
              | "GroupLineKeys" >> beam.GroupByKey()
              | "Duplicates" >> beam.FlatMap(_duplicate_occurrences, self.keep_first))
    by_id = docs | "KeyById" >> beam.Map(lambda doc: (doc.id, doc))
    return ({"doc": by_id, "remove": remove}
            | "JoinById" >> beam.CoGroupByKey()
            | "RemoveLines" >> beam.FlatMap(_remove_lines, self.reason))


def _first_of_duplicates(key_and_docs, reason: str):
  _, docs = key_and_docs
  docs = sorted(docs, key=lambda doc: doc.id)
  if len(docs) > 1:
    count(f"dropped/{reason}", len(docs) - 1)
  yield docs[0]


class DeduplicateDocuments(beam.PTransform):
  """Keeps one document (the smallest id) of each group sharing `key(doc)`; drops counted."""

  def __init__(self, key: Callable[[Document], object], reason: str = "duplicate_document"):
    super().__init__()
    self.key, self.reason = key, reason

  def expand(self, docs):
    return (docs
            | "KeyDocuments" >> beam.Map(lambda doc: (self.key(doc), doc))
            | "GroupByKey" >> beam.GroupByKey()
            | "KeepFirst" >> beam.FlatMap(_first_of_duplicates, self.reason))


class WriteDocuments(beam.PTransform):
  """JSONL shards `documents-SSSSS-of-NNNNN.jsonl[.gz|.zst]` under `output`."""

  SUFFIXES = {"gzip": ".jsonl.gz", "zstd": ".jsonl.zst", "none": ".jsonl"}
  # Everything a run of preprocessing.run writes to its output directory, for
  # remove_previous_outputs: the completion marker first, shards of every compression and count,
  # the temporary directories of Beam's file sink (WriteToText renames out of them when done).
  OUTPUT_NAMES = (STATS_FILE, f"{STATS_FILE}.tmp-*",
                  *(f"documents-[0-9]*-of-[0-9]*{suffix}" for suffix in SUFFIXES.values()),
                  "beam-temp-documents-*")

  def __init__(self, output: str, compression: str = "gzip", num_shards: int = 0):
    super().__init__()
    self.output, self.compression, self.num_shards = output, compression, num_shards

  def expand(self, docs):
    def counted_json(doc: Document) -> str:
      count("documents_written")
      return doc.to_json()

    return (docs
            | "ToJson" >> beam.Map(counted_json)
            | "WriteShards" >> beam.io.WriteToText(
                FileSystems.join(self.output, "documents"),
                file_name_suffix=self.SUFFIXES[self.compression], num_shards=self.num_shards))


def collect_stats(result) -> dict:
  """Counters of a finished pipeline as {documents_read, documents_written, dropped: {...}, ...}."""
  counters = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["counters"]
  stats = {"documents_read": 0, "documents_written": 0, "dropped": {}, "malformed": {},
           "lines_removed": {}}
  for counter in counters:
    name = counter.key.metric.name
    value = counter.committed if counter.committed is not None else counter.attempted
    group, _, reason = name.partition("/")
    if reason:
      stats.setdefault(group, {})[reason] = stats.get(group, {}).get(reason, 0) + value
    else:
      stats[name] = stats.get(name, 0) + value
  for group in ("dropped", "malformed", "lines_removed"):
    stats[group] = dict(sorted(stats[group].items()))
  return stats


def write_stats(stats: dict, output: str) -> str:
  """Writes `stats.json`, the run's completion marker: call it after everything else is written.

  It goes to a temporary name first, so a run killed while writing it leaves no marker.
  """
  path = FileSystems.join(output, STATS_FILE)
  temporary = f"{path}.tmp-{uuid.uuid4().hex}"
  with FileSystems.create(temporary) as f:
    f.write((json.dumps(stats, indent=2) + "\n").encode("utf-8"))
  FileSystems.rename([temporary], [path])
  return path


def _local(path: str) -> bool:
  return FileSystems.get_scheme(path) is None


def _matching_files(patterns: Iterable[str]) -> list[str]:
  paths = [m.path for result in FileSystems.match(list(patterns)) for m in result.metadata_list]
  return [os.path.abspath(p) if _local(p) else p for p in paths]


def remove_previous_outputs(output: str, names: Sequence[str], keep: str | None = None) -> int:
  """Deletes what an earlier run of the same program left in `output`; returns the files removed.

  A run killed midway, or one with another shard count, compression or input, leaves files that
  this run would not overwrite (shards of another count, temporary files, a completion marker
  beside half the shards); removing them first makes a rerun end with the output of a clean run.
  `names` are globs, relative to `output`, of the program's own output files and temporary
  directories, completion markers first so that a run killed while cleaning up leaves none.
  Nothing else in `output` is touched. If a file to remove matches `keep` (the run's input
  glob), nothing is removed and the program exits with an error.
  """
  found = []
  for name in names:
    pattern = FileSystems.join(output, name)
    # A name may be a directory (Beam's temporary ones): its files go as well.
    found.append(_matching_files([pattern, FileSystems.join(pattern, "*")]))
  if keep is not None and (inputs := set(_matching_files([keep])) & {p for f in found for p in f}):
    raise SystemExit(f"error: --output={output} holds input files ({sorted(inputs)[0]}, ...) "
                     "with the names of this program's output, which a run replaces; write to "
                     "another directory")
  removed = 0
  for name, files in zip(names, found, strict=True):
    if files:
      FileSystems.delete(files)
      removed += len(files)
    if _local(output):  # directories left empty (object stores have none)
      directories = [d for d in glob.glob(os.path.join(output, name)) if os.path.isdir(d)]
      if directories:
        FileSystems.delete(directories)
  if removed:
    logging.warning("removed %d files an earlier run left in %s (%s)", removed, output,
                    ", ".join(n for n, files in zip(names, found, strict=True) if files))
  return removed


def input_bytes(pattern: str) -> int:
  matches = FileSystems.match([pattern])[0].metadata_list
  if not matches:
    raise SystemExit(f"error: no files match --input={pattern}")
  return sum(m.size_in_bytes for m in matches)


def _direct_runner(options: PipelineOptions) -> FnApiRunner:
  """Beam's DirectRunner without its first step, which downloads and starts the Prism runner
  (offline: a failed download, logged, before falling back). FnApiRunner reads
  --direct_running_mode and --direct_num_workers itself: in this process, in worker threads, or
  in worker processes (multi_processing), as the DirectRunner would run it."""
  # Worker processes get the pipeline options (pickler, file system settings) only through the
  # provision info, as Beam's DirectRunner hands it to FnApiRunner; without it they start with
  # none.
  encoded_options = JobServiceHandle.encode_pipeline_options(options.get_all_options())
  return FnApiRunner(provision_info=ExtendedProvisionInfo(
      beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded_options)))


def run_pipeline(beam_args: Sequence[str], input_pattern: str, description: str,
                 build: Callable[[beam.Pipeline], None]) -> dict:
  """Builds (with `build`) and runs one pipeline with the Beam options in `beam_args`.

  On the in-process DirectRunner a progress bar follows the input bytes read. Returns the run's
  runner, wall seconds and counters (collect_stats).
  """
  options = PipelineOptions(beam_args)
  runner = options.view_as(StandardOptions).runner or "DirectRunner"
  # Beam takes runner names in any case, with or without "Runner".
  direct = runner.lower().removesuffix("runner") == "direct"
  in_process = direct and options.view_as(DirectOptions).direct_running_mode == "in_memory"
  global progress_bar
  started = time.time()
  with tqdm(total=input_bytes(input_pattern), unit="B", unit_scale=True, desc=description,
            disable=not in_process) as bar:
    # Worker processes never see it; worker threads would update it all at once.
    progress_bar = bar if in_process else None
    try:
      root = beam.Pipeline(runner=_direct_runner(options) if direct else None, options=options)
      build(root)
      result = root.run()
      result.wait_until_finish()
    finally:
      progress_bar = None
  return {"runner": runner, "seconds": round(time.time() - started, 1), **collect_stats(result)}
