"""python -m preprocessing.tokenize_shards --input=GLOB --output=DIR --tokenizer=MODEL [...]

Tokenizes one source's documents (JSON lines with a `text` field, as preprocessing.run writes
them) into ArrayRecord shards for llama_jax.data; run it once per source, into one directory each:

    python -m preprocessing.tokenize_shards --input='out/wikipedia/documents-*.jsonl.gz' \
        --output=tokens/wikipedia --tokenizer=tokenizer.model [--num_shards=64]

Each record is one document's token ids with EOS appended (no BOS), as little-endian uint16
(uint32 for a vocabulary over 65536). A document goes to shard hash(id) mod N, and a shard holds
its documents sorted by id, so the output is a function of the input alone, on any runner.
`index.json` lists the shards with their document and token counts (the loader's contract; a
shard that received no document is not written) and the tokenizer they were made with;
`stats.json` counts documents read, written and dropped (empty text) and malformed input.
Documents are encoded in batches, on SentencePiece's threads: one per core the worker may use.
Shards are written with ArrayRecord's own writer to a temporary name and renamed when complete,
so DIR must be a local or mounted file system. Flags this program does not know are Beam options.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import uuid
from collections.abc import Sequence

import apache_beam as beam
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from llama_jax.data import INDEX_FILE, SHARD_WRITER_OPTIONS, token_dtype
from llama_jax.tokenizer import Tokenizer
from preprocessing import pipeline
from preprocessing.document import Document


def parse_text_record(line: str, where: str) -> Document:
  """A JSON line with a `text` string; the id is the record's `id`, else its file:line."""
  try:
    record = json.loads(line)
  except json.JSONDecodeError as error:
    raise ValueError(f"{where}: not valid JSON ({error})") from None
  if not isinstance(record, dict) or not isinstance(record.get("text"), str):
    raise ValueError(f"{where}: record has no `text` string")
  return Document(id=str(record.get("id", where)), source=str(record.get("source", "")),
                  text=record["text"])


def shard_of(doc_id: str, num_shards: int) -> int:
  return int.from_bytes(hashlib.sha1(doc_id.encode("utf-8")).digest()[:8], "little") % num_shards


# Characters of text per batch encode: enough documents that SentencePiece's threads finish
# together; ~1.5M tokens, whose Python lists take ~50 MB.
BATCH_CHARS = 1 << 22


class TokenizeDocuments(beam.DoFn):
  """A batch of Documents -> (shard, (id, token bytes with EOS)) for each; an empty text is
  dropped and counted. Batches (beam.BatchElements) let SentencePiece encode on all cores."""

  def __init__(self, model_file: str, num_shards: int):
    self.model_file, self.num_shards = model_file, num_shards

  def setup(self):
    self.tokenizer = Tokenizer(self.model_file)
    self.dtype = token_dtype(self.tokenizer.vocab_size)

  def process(self, docs: list[Document]):
    kept = [doc for doc in docs if doc.text]
    if len(kept) < len(docs):
      pipeline.count("dropped/empty_text", len(docs) - len(kept))
    if not kept:
      return
    encoded = self.tokenizer.encode_batch([doc.text for doc in kept], eos=True)
    pipeline.count("tokens", sum(map(len, encoded)))
    for doc, ids in zip(kept, encoded, strict=True):
      yield shard_of(doc.id, self.num_shards), (doc.id, np.asarray(ids, self.dtype).tobytes())


def shard_name(shard: int, num_shards: int) -> str:
  return f"tokens-{shard:05d}-of-{num_shards:05d}.array_record"


def write_records(path: str, records: Sequence[bytes]) -> None:
  """An ArrayRecord file of `records`, written to a temporary name and renamed when complete:
  a retried bundle never leaves half a shard."""
  temporary = f"{path}.tmp-{uuid.uuid4().hex}"
  writer = ArrayRecordWriter(temporary, SHARD_WRITER_OPTIONS)
  for record in records:
    writer.write(record)
  writer.close()
  os.replace(temporary, path)


def write_shard(shard_and_docs, output: str, num_shards: int, itemsize: int) -> dict:
  """Writes one shard's documents in id order; returns its index entry."""
  shard, docs = shard_and_docs
  name = shard_name(shard, num_shards)
  records = [record for _, record in sorted(docs)]
  write_records(os.path.join(output, name), records)
  pipeline.count("documents_written", len(records))
  return {"file": name, "documents": len(records),
          "tokens": sum(len(record) for record in records) // itemsize}


def write_index(shards: list[dict], output: str, header: dict) -> None:
  shards = sorted(shards, key=lambda s: s["file"])
  index = {**header, "documents": sum(s["documents"] for s in shards),
           "tokens": sum(s["tokens"] for s in shards), "shards": shards}
  # A temporary name, then a rename: a run killed while writing leaves no index at all.
  path = os.path.join(output, INDEX_FILE)
  with open(f"{path}.tmp", "w") as f:
    json.dump(index, f, indent=1)
    f.write("\n")
  os.replace(f"{path}.tmp", path)


def build(root: beam.Pipeline, args: argparse.Namespace, tokenizer: Tokenizer):
  os.makedirs(args.output, exist_ok=True)
  # What an earlier run left (shards of another count, `.tmp-` files, an index of other shards).
  pipeline.remove_previous_outputs(
      args.output, (pipeline.STATS_FILE, f"{pipeline.STATS_FILE}.tmp-*", INDEX_FILE,
                    f"{INDEX_FILE}.tmp",
                    "tokens-[0-9]*-of-[0-9]*.array_record",
                    "tokens-[0-9]*-of-[0-9]*.array_record.tmp-*"), args.input)
  dtype = token_dtype(tokenizer.vocab_size)
  header = {"input": args.input, "tokenizer": str(tokenizer.path),
            "tokenizer_sha256": tokenizer.sha256,
            "vocab_size": tokenizer.vocab_size, "eos_id": tokenizer.eos_id,
            "dtype": dtype.name}
  return (root
          | "Read" >> pipeline.read_jsonl_files(args.input, parse_text_record)
          | "Batch" >> beam.BatchElements(min_batch_size=BATCH_CHARS, max_batch_size=BATCH_CHARS,
                                          element_size_fn=lambda doc: len(doc.text))
          | "Tokenize" >> beam.ParDo(TokenizeDocuments(str(tokenizer.path), args.num_shards))
          | "GroupShards" >> beam.GroupByKey()
          | "WriteShards" >> beam.Map(write_shard, args.output, args.num_shards, dtype.itemsize)
          | "AllShards" >> beam.combiners.ToList()
          | "WriteIndex" >> beam.Map(write_index, args.output, header))


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(prog="python -m preprocessing.tokenize_shards",
                                   description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--input", required=True, help="glob of one source's JSONL documents")
  parser.add_argument("--output", required=True, help="directory for shards and index.json")
  parser.add_argument("--tokenizer", required=True, help="SentencePiece model file")
  parser.add_argument("--num_shards", type=int, default=64)
  args, beam_args = parser.parse_known_args(argv)
  if args.num_shards < 1:
    parser.error(f"--num_shards={args.num_shards}: must be at least 1")
  try:
    tokenizer = Tokenizer(args.tokenizer)
  except (FileNotFoundError, ValueError) as error:
    parser.error(str(error))
  run = pipeline.run_pipeline(beam_args, args.input, "tokenize input",
                              lambda root: build(root, args, tokenizer))
  stats = {"input": args.input, "output": args.output, "tokenizer": args.tokenizer, **run}
  path = pipeline.write_stats(stats, args.output)
  print(f"{stats['documents_written']} documents, {stats.get('tokens', 0)} tokens written to "
        f"{args.output}; dropped {stats['dropped']}, malformed {stats['malformed']}; "
        f"stats in {path}", file=sys.stderr)
  return stats


if __name__ == "__main__":
  main()
