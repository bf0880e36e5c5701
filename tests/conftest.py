"""Test set-up: JAX on the CPU with 8 simulated devices (set before jax is imported)."""

import os
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8").strip()

import pytest  # noqa: E402

from llama_jax.config import load_config_file  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def load_config():
  return lambda name: load_config_file(REPO_ROOT / "configs" / f"{name}.py")
