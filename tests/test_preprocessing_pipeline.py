"""The shared Beam wiring: counted drops, line deduplication, shards and stats, CCNet keys."""

import gzip
import json

import apache_beam as beam
import pytest

from preprocessing import pipeline
from preprocessing.ccnet.normalize import line_hash, normalize_for_dedup, normalize_for_lm
from preprocessing.document import Document, Drop


def _doc(doc_id, text):
  return Document(id=doc_id, source="test", text=text)


def _run(build, docs, tmp_path):
  """Runs `build(pcollection)` on docs with the DirectRunner; returns (written docs, stats)."""
  root = beam.Pipeline()
  out = build(root | beam.Create(docs))
  out | pipeline.WriteDocuments(str(tmp_path), "gzip", num_shards=2)
  result = root.run()
  result.wait_until_finish()
  written = []
  for shard in sorted(tmp_path.glob("documents-*-of-00002.jsonl.gz")):
    with gzip.open(shard, "rt") as f:
      written += [Document.from_json(line) for line in f]
  return sorted(written, key=lambda d: d.id), pipeline.collect_stats(result)


def test_ccnet_normalisation_matches_cc_net_rules():
  assert normalize_for_dedup("  Héllo, World 2023！ «x»\x07 ") == "héllo, world 0000 x"
  assert normalize_for_lm("  Héllo, World 2023！ «x»\x07 ") == 'hello, world 0000! "x"'
  assert line_hash("Cookie notice 2019") == line_hash("cookie NOTICE 1984")
  assert line_hash("café") != line_hash("cafe")  # accents are kept for dedup
  assert 0 <= line_hash("x") < 2**64


def test_filters_drop_and_count_by_reason(tmp_path):
  def no_spam(doc):
    return Drop("spam") if "spam" in doc.text else doc

  def tag(doc):
    doc.metadata["tagged"] = True
    return doc

  docs = [_doc("a", "good"), _doc("b", "spam here"), _doc("c", "more spam")]
  written, stats = _run(lambda p: p | beam.ParDo(pipeline.ApplyFilters([no_spam, tag])),
                        docs, tmp_path)
  assert [(d.id, d.metadata) for d in written] == [("a", {"tagged": True})]
  assert stats["dropped"] == {"spam": 2}
  assert stats["documents_written"] == 1


DOCS = [
    _doc("1", "Accept cookies\nAlpha one.\nAlpha one.\nMenu\nUnique one."),
    _doc("2", "ACCEPT cookies\nBeta two.\nMenu"),
    _doc("3", "Gamma three.\nMenu"),
    _doc("4", "Menu\naccept cookies"),
]


def test_ccnet_dedup_removes_every_copy(tmp_path):
  written, stats = _run(
      lambda p: p | pipeline.DeduplicateLines(line_hash, keep_first=False, reason="duplicate"),
      DOCS, tmp_path)
  # Keys ignore case; a line repeated inside one document is a duplicate too.
  assert {d.id: d.text for d in written} == {
      "1": "Unique one.", "2": "Beta two.", "3": "Gamma three."}
  assert stats["dropped"] == {"all_lines_duplicate": 1}
  assert stats["lines_removed"] == {"duplicate": 4 + 2 + 1}
  assert written[0].metadata["lines_removed_duplicate"] == 4


def test_c4_style_dedup_keeps_the_first_copy(tmp_path):
  written, stats = _run(
      lambda p: p | pipeline.DeduplicateLines(str.lower, keep_first=True, reason="duplicate"),
      DOCS, tmp_path)
  assert {d.id: d.text for d in written} == {
      "1": "Accept cookies\nAlpha one.\nMenu\nUnique one.", "2": "Beta two.",
      "3": "Gamma three."}
  assert stats["dropped"] == {"all_lines_duplicate": 1}


@pytest.mark.parametrize("compression, suffix", [("zstd", ".jsonl.zst"), ("none", ".jsonl")])
def test_written_shards_round_trip(tmp_path, compression, suffix):
  root = beam.Pipeline()
  root | beam.Create(DOCS) | pipeline.WriteDocuments(str(tmp_path), compression, num_shards=1)
  root.run().wait_until_finish()
  (shard,) = tmp_path.glob(f"documents-00000-of-00001{suffix}")
  if compression == "zstd":
    import zstandard

    text = zstandard.ZstdDecompressor().stream_reader(shard.open("rb")).read().decode()
  else:
    text = shard.read_text()
  assert sorted(json.loads(line)["id"] for line in text.splitlines()) == ["1", "2", "3", "4"]


def test_jsonl_reader_counts_bad_lines(tmp_path):
  (tmp_path / "in.jsonl").write_bytes(
      (_doc("1", "ok").to_json() + "\n{not json\n\n" + '{"id": 2}\n').encode() + b"\xff\xfe\n")
  root = beam.Pipeline()
  docs = root | pipeline.read_jsonl_files(str(tmp_path / "*.jsonl"), Document.from_json)
  docs | pipeline.WriteDocuments(str(tmp_path / "out"), "none", num_shards=1)
  result = root.run()
  result.wait_until_finish()
  stats = pipeline.collect_stats(result)
  assert stats["documents_read"] == 1
  assert stats["malformed"] == {"bad_json_record": 2, "invalid_utf8": 1}


def test_exact_duplicate_documents_keep_the_smallest_id(tmp_path):
  docs = [_doc("b", "same"), _doc("a", "same"), _doc("c", "other"), _doc("d", "same")]
  written, stats = _run(lambda p: p | pipeline.DeduplicateDocuments(lambda d: d.text), docs,
                        tmp_path)
  assert [d.id for d in written] == ["a", "c"]
  assert stats["dropped"] == {"duplicate_document": 2}
