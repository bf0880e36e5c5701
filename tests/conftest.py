"""Test set-up: JAX on the CPU with 8 simulated devices (set before jax is imported)."""

import os
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import gzip  # noqa: E402

import pytest  # noqa: E402

from llama_jax.config import load_config_file  # noqa: E402
from preprocessing.document import Document  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
# JAX's persistent compilation cache is off in the suite and in the commands it starts (empty
# directory): each run compiles afresh, independent of earlier runs (tests count compiles).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", "")


@pytest.fixture(scope="session")
def load_config():
  return lambda name: load_config_file(REPO_ROOT / "configs" / f"{name}.py")


def written_documents(directory: Path, key=lambda doc: doc.id) -> dict:
  """The documents preprocessing.run wrote to `directory` (gzip shards), by `key`."""
  docs = {}
  for shard in sorted(directory.glob("documents-*.jsonl.gz")):
    with gzip.open(shard, "rt") as f:
      docs.update((key(doc), doc) for doc in map(Document.from_json, f))
  return docs


@pytest.fixture(scope="session")
def hf_llama_dir(tmp_path_factory):
  """A small random Hugging Face LLaMA directory with Meta's tokenizer.model (hf_reference)."""
  from llama_jax.testing.hf_reference import save_random_llama

  return save_random_llama(tmp_path_factory.mktemp("hf_llama"))


@pytest.fixture(scope="session")
def hf_lm(hf_llama_dir):
  """lm-evaluation-harness's `hf` model on hf_llama_dir, in float32 (lm_eval_reference)."""
  from lm_eval_reference import hf_lm

  return hf_lm(hf_llama_dir)
