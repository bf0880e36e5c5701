"""`python -m preprocessing.run` end to end on WET files with the DirectRunner."""

import gzip
import json
import random
import subprocess
import sys

import pytest
from conftest import written_documents

from preprocessing import run
from preprocessing.testing import synthetic_web
from preprocessing.wet import wet_bytes

BOILERPLATE = "Subscribe to our newsletter to get the latest updates."


def _english(rng, paragraphs=4):
  return "\n".join(synthetic_web._paragraph(rng, synthetic_web.ENGLISH) for _ in range(paragraphs))


@pytest.fixture(scope="module")
def ccnet_models(tmp_path_factory):
  return synthetic_web.train_ccnet_models(tmp_path_factory.mktemp("ccnet_models"))


def _by_url(directory):
  return written_documents(directory, lambda doc: doc.metadata["url"])


def test_ccnet_end_to_end(tmp_path, ccnet_models):
  rng = random.Random(1)
  pages = {
      "http://en.example/1": BOILERPLATE + "\n" + _english(rng),
      "http://en.example/2": _english(rng) + "\n" + BOILERPLATE,
      "http://fr.example/": synthetic_web.page(rng, "french"),
      "http://short.example/": "A short English page about the river and the old city.",
      "http://boiler.example/": BOILERPLATE,
      "http://junk.example/": synthetic_web.page(rng, "junk"),
  }
  (tmp_path / "in").mkdir()
  (tmp_path / "in" / "a.warc.wet.gz").write_bytes(wet_bytes(list(pages.items())[:4]))
  (tmp_path / "in" / "b.warc.wet.gz").write_bytes(wet_bytes(list(pages.items())[4:]))
  truncated = wet_bytes([("http://cut.example/", _english(rng))], compress=False)[:-40]
  (tmp_path / "in" / "c.warc.wet").write_bytes(truncated)
  (tmp_path / "in" / "d.warc.wet.gz").write_bytes(b"")
  flags = [f"{k}={v}" for k, v in ccnet_models.items()]
  stats = run.main(["--source=ccnet", f"--input={tmp_path / 'in' / '*.warc.wet*'}",
                    f"--output={tmp_path / 'out'}", "--perplexity_cutoffs=en:1e9:1e10", *flags])

  written = _by_url(tmp_path / "out")
  assert sorted(written) == ["http://en.example/1", "http://en.example/2"]
  assert BOILERPLATE not in written["http://en.example/1"].text
  assert {"language", "language_score", "perplexity", "bucket", "reference_score"} <= set(
      written["http://en.example/1"].metadata)
  assert stats["documents_read"] == 6 and stats["documents_written"] == 2
  dropped = stats["dropped"]
  assert dropped["all_lines_duplicate"] == 1 and dropped["too_short"] == 1
  assert dropped["language_fr"] == 1
  assert sum(dropped.values()) == 4  # the junk page goes to language id, perplexity or reference
  assert stats["malformed"] == {"empty_file": 1, "truncated_record": 1}
  assert stats["lines_removed"] == {"duplicate": 2}
  assert json.loads((tmp_path / "out" / "stats.json").read_text()) == stats


def test_c4_end_to_end(tmp_path):
  rng = random.Random(2)
  article = ("The town hall was built in the last century by local workers. "
             "It stands near the river and the old bridge. "
             "Visitors can see the tower from the main road.")
  pages = [
      ("http://c4.example/1", f"Home | News\n{article}\nThis site uses cookies to help us."),
      ("http://c4.example/2", f"{article}\nIt was restored after the war by the same family."),
      ("http://c4.example/3", "Lorem ipsum dolor sit amet, consectetur elit.\n" + article),
      ("http://c4.example/4", synthetic_web.page(rng, "french")),
  ]
  (tmp_path / "in.warc.wet.gz").write_bytes(wet_bytes(pages))
  stats = run.main(["--source=c4", f"--input={tmp_path / 'in.warc.wet.gz'}",
                    f"--output={tmp_path / 'out'}"])
  written = _by_url(tmp_path / "out")
  # Page 2 loses the article lines page 1 kept and is left with one sentence.
  assert list(written) == ["http://c4.example/1"]
  assert written["http://c4.example/1"].text == article
  assert stats["dropped"]["lorem_ipsum"] == 1
  assert stats["dropped"]["too_few_sentences"] == 1
  assert sum(stats["dropped"].values()) == 3
  assert stats["lines_removed"] == {"duplicate": 1}


def test_released_c4_copy_is_read_as_is(tmp_path):
  records = [{"text": "First page.", "url": "http://a/", "timestamp": "2019-04-25T12:57:54Z"},
             {"text": "Second page.", "url": "http://b/", "timestamp": "2019-04-25T12:57:54Z"}]
  with gzip.open(tmp_path / "c4-train.00000-of-01024.json.gz", "wt") as f:
    f.write("".join(json.dumps(r) + "\n" for r in records) + "not json\n")
  stats = run.main(["--source=c4", "--c4_input_format=c4_json",
                    f"--input={tmp_path / '*.json.gz'}", f"--output={tmp_path / 'out'}"])
  assert sorted(_by_url(tmp_path / "out")) == ["http://a/", "http://b/"]
  assert stats["malformed"] == {"bad_json_record": 1}


def _run_cli(*args):
  return subprocess.run([sys.executable, "-m", "preprocessing.run", *args],
                        capture_output=True, text=True, timeout=120)


def test_command_line_errors_name_the_flag(tmp_path):
  (tmp_path / "x.warc.wet.gz").write_bytes(wet_bytes([]))
  missing_models = _run_cli("--source=ccnet", f"--input={tmp_path / '*.gz'}",
                            f"--output={tmp_path / 'out'}")
  assert missing_models.returncode == 2
  assert "--lid_model is required for --source=ccnet" in missing_models.stderr
  assert "--reference_model is required" in missing_models.stderr
  no_files = _run_cli("--source=c4", f"--input={tmp_path / 'none*.gz'}", "--output=o")
  assert no_files.returncode != 0 and "no files match --input=" in no_files.stderr
  bad_skip = _run_cli("--source=ccnet", f"--input={tmp_path / '*.gz'}", "--output=o",
                      "--skip=perplexity,dedup", "--lid_model=x")
  assert "--skip=dedup: unknown step" in bad_skip.stderr
  missing_lid = _run_cli("--source=ccnet", f"--input={tmp_path / '*.gz'}",
                         f"--output={tmp_path / 'o'}", "--skip=perplexity,reference",
                         f"--lid_model={tmp_path / 'lid.bin'}")
  assert missing_lid.returncode == 2 and "lid.176.bin" in missing_lid.stderr


def test_worker_processes_give_the_same_result(tmp_path, ccnet_models):
  # Filters are pickled to separate worker processes and counters come back from them, as on a
  # cluster runner.
  synthetic_web.write_wet(tmp_path / "in.warc.wet.gz", 200, seed=3)
  flags = [f"{k}={v}" for k, v in ccnet_models.items()]
  results = {}
  for mode in ("in_memory", "multi_processing"):
    stats = run.main(["--source=ccnet", f"--input={tmp_path / 'in.warc.wet.gz'}",
                      f"--output={tmp_path / mode}", f"--direct_running_mode={mode}",
                      "--direct_num_workers=2", *flags])
    results[mode] = ({k: v for k, v in stats.items() if k not in ("seconds", "output")},
                     {url: doc.text for url, doc in _by_url(tmp_path / mode).items()})
  assert results["in_memory"] == results["multi_processing"]
  assert results["in_memory"][0]["documents_written"] > 0
