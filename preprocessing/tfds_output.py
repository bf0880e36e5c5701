"""A source's documents as a TensorFlow Datasets dataset (`preprocessing.run --output_format=tfds`).

`preprocessing.run --source=NAME --output=DIR --output_format=tfds` writes DIR/llama_corpus/NAME/
1.0.0/: ArrayRecord shards `llama_corpus-train.array_record-SSSSS-of-NNNNN` of TFDS's own example
encoding (features `id`, `source`, `text`, and `metadata` as a JSON string), with TFDS's
dataset_info.json (splits and their counts) and features.json. Each source is a config of the
dataset `llama_corpus`, so the seven sources share one TFDS data_dir:

    tfds.data_source("llama_corpus/wikipedia", data_dir=DIR, split="train")
    tfds.builder_from_directory(f"{DIR}/llama_corpus/wikipedia/1.0.0").as_data_source("train")

and training reads it as a TFDS source (config.data.tfds.wikipedia.name=llama_corpus/wikipedia).
A document goes to shard hash(id) mod N and a shard holds its documents sorted by id, as in
`tokenize_shards`: the output is a function of the input alone, on any runner, and a TFDS source
lists its documents in the order of token shards made from them with the same N.

TFDS's own writer (`download_and_prepare`) and its split statistics read files through tf.data;
to do without TensorFlow the shards are written here and the split sizes given to
`tfds.folder_dataset.write_metadata` (docs/decisions.md). Shards are written to a temporary name
and renamed when complete, so DIR must be a local or mounted file system.
"""

from __future__ import annotations

import json
import os

import apache_beam as beam

from preprocessing import pipeline
from preprocessing.document import Document
from preprocessing.tokenize_shards import shard_of, write_records

DATASET = "llama_corpus"
VERSION = "1.0.0"
SPLIT = "train"
FILE_FORMAT = "array_record"
# Shards when --num_shards is 0 (the runner's choice for JSONL): TFDS lists a fixed count.
DEFAULT_SHARDS = 16
# What a run writes to the dataset's directory, for pipeline.remove_previous_outputs: the
# completion marker first.
OUTPUT_NAMES = (pipeline.STATS_FILE, f"{pipeline.STATS_FILE}.tmp-*", "dataset_info.json",
                "features.json", f"{DATASET}-{SPLIT}.{FILE_FORMAT}-*")


def dataset_dir(output: str, source: str) -> str:
  """Where a source's dataset goes in the TFDS data_dir `output`."""
  return os.path.join(output, DATASET, source, VERSION)


def features():
  import tensorflow_datasets as tfds

  text = tfds.features.Text
  return tfds.features.FeaturesDict({"id": text(), "source": text(), "text": text(),
                                     "metadata": text()})


class ExampleEncoder:
  """A document's fields -> the bytes of a TFDS example, the same bytes in every process.

  TFDS's own `features.serialize_example` writes the tf.train.Example's feature map in an order
  that changes with the process's hash seed (seen here), so worker processes would write
  different bytes for the same example; protobuf's deterministic mode sorts the map."""

  def __init__(self):
    from tensorflow_datasets.core import example_serializer

    self.features = features()
    self._serializer = example_serializer.ExampleSerializer(self.features.get_serialized_info())

  def __call__(self, example: dict) -> bytes:
    encoded = self.features.encode_example(example)
    return self._serializer.get_tf_example(encoded).SerializeToString(deterministic=True)


def file_template(directory: str):
  """TFDS's naming of the dataset's shard files (llama_corpus-train.array_record-00003-of-00016)."""
  import tensorflow_datasets as tfds

  return tfds.core.ShardedFileTemplate(
      data_dir=directory, template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
      dataset_name=DATASET, split=SPLIT, filetype_suffix=FILE_FORMAT)


class SerializeDocuments(beam.DoFn):
  """Document -> (shard, (id, TFDS-encoded example))."""

  def __init__(self, num_shards: int):
    self.num_shards = num_shards

  def setup(self):
    self.encode = ExampleEncoder()

  def process(self, doc: Document):
    example = {"id": doc.id, "source": doc.source, "text": doc.text,
               "metadata": json.dumps(doc.metadata, sort_keys=True)}
    yield shard_of(doc.id, self.num_shards), (doc.id, self.encode(example))


def write_shard(shard_and_docs, directory: str, num_shards: int) -> dict:
  """Writes one shard's examples in id order; returns its shard number, examples and bytes."""
  shard, docs = shard_and_docs
  records = [record for _, record in sorted(docs)]
  path = file_template(directory).sharded_filepath(shard_index=shard, num_shards=num_shards)
  write_records(str(path), records)
  pipeline.count("documents_written", len(records))
  return {"shard": shard, "documents": len(records), "bytes": sum(map(len, records))}


def write_metadata(shards: list[dict], directory: str, num_shards: int, source: str) -> None:
  """dataset_info.json and features.json, once every shard is written; a shard no document went
  to is written empty (TFDS lists every shard of the count)."""
  import tensorflow_datasets as tfds

  template = file_template(directory)
  written = {shard["shard"]: shard for shard in shards}
  for shard in sorted(set(range(num_shards)) - set(written)):
    write_records(str(template.sharded_filepath(shard_index=shard, num_shards=num_shards)), [])
    written[shard] = {"documents": 0, "bytes": 0}
  split = tfds.core.SplitInfo(
      name=SPLIT, shard_lengths=[written[shard]["documents"] for shard in range(num_shards)],
      num_bytes=sum(shard["bytes"] for shard in written.values()), filename_template=template)
  # check_data=False: TFDS's check reads an example through tf.data.
  tfds.folder_dataset.write_metadata(
      data_dir=directory, features=features(), split_infos=[split], filename_template=template,
      check_data=False,
      description=f"The {source!r} source of the LLaMA-1 recipe's corpus (llama-jax "
                  f"preprocessing.run): one example per kept document.")


class WriteTfdsDataset(beam.PTransform):
  """Documents -> the source's TFDS dataset under the data_dir `output`."""

  def __init__(self, output: str, source: str, num_shards: int = 0):
    super().__init__()
    self.directory = dataset_dir(output, source)
    self.source, self.num_shards = source, num_shards or DEFAULT_SHARDS

  def expand(self, docs):
    return (docs
            | "Serialize" >> beam.ParDo(SerializeDocuments(self.num_shards))
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShards" >> beam.Map(write_shard, self.directory, self.num_shards)
            | "AllShards" >> beam.combiners.ToList()
            | "WriteMetadata" >> beam.Map(write_metadata, self.directory, self.num_shards,
                                          self.source))
