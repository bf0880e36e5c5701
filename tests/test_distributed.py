"""Multi-host: 2 processes x 4 CPU devices over loopback give one process x 8 devices' step."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llama_jax import distributed
from llama_jax.model import ModelConfig
from llama_jax.sharding import MeshRules, logical_rules, make_mesh
from llama_jax.train_step import ShardedTraining

CONFIG = ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=8, ffn_dim=128,
                     context_length=16, dtype="float32")
MESH = {"data": 2, "fsdp": 2, "tensor": 2}
GLOBAL_BATCH = 8
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def step_training(devices) -> ShardedTraining:
  mesh_rules = MeshRules(make_mesh(MESH, devices), logical_rules(sequence_parallel=True))
  return ShardedTraining(CONFIG, optax.adamw(1e-3), mesh_rules)


def tokens() -> dict[str, np.ndarray]:
  ids = np.random.default_rng(0).integers(0, CONFIG.vocab_size,
                                          (GLOBAL_BATCH, CONFIG.context_length + 1))
  return {"inputs": ids[:, :-1].astype(np.int32), "targets": ids[:, 1:].astype(np.int32)}


def _free_port() -> int:
  with socket.socket() as sock:
    sock.bind(("localhost", 0))
    return sock.getsockname()[1]


def test_two_processes_match_one(tmp_path):
  training = step_training(jax.devices())
  _, metrics = training.step(training.init(jnp.int32(0)), tokens())

  address = f"localhost:{_free_port()}"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO_ROOT,
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  workers = [subprocess.Popen([sys.executable, "tests/distributed_worker.py", address, "2",
                               str(i)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=open(tmp_path / f"worker{i}.log", "w"), text=True)
             for i in range(2)]
  outputs = [worker.communicate(timeout=300)[0] for worker in workers]
  for i, worker in enumerate(workers):
    assert worker.returncode == 0, (tmp_path / f"worker{i}.log").read_text()[-3000:]
  results = [json.loads(out.strip().splitlines()[-1]) for out in outputs]

  assert [r["process"] for r in results] == [0, 1]
  assert all(r["devices"] == 8 for r in results)
  assert [r["rows"] for r in results] == [[0, 4], [4, 8]]  # each process loads half the batch
  for result in results:
    np.testing.assert_allclose(result["loss"], float(metrics["loss"]), rtol=1e-5)
    np.testing.assert_allclose(result["grad_norm"], float(metrics["grad_norm"]), rtol=1e-5)


def test_partial_explicit_start_is_refused():
  with pytest.raises(ValueError, match="needs all three"):
    distributed.initialize(coordinator_address="localhost:1234")
  with pytest.raises(ValueError, match=r"--process_id=2 must be in \[0, --num_processes=2\)"):
    distributed.initialize("localhost:1234", 2, 2)


def test_without_slurm_or_flags_it_is_one_process(monkeypatch):
  monkeypatch.delenv("SLURM_JOB_ID", raising=False)
  assert distributed.initialize() == "single"
  monkeypatch.setenv("SLURM_JOB_ID", "7")  # a SLURM allocation with one task: still single
  for name, value in (("SLURM_STEP_NODELIST", "node1"), ("SLURM_NTASKS", "1"),
                      ("SLURM_PROCID", "0"), ("SLURM_LOCALID", "0")):
    monkeypatch.setenv(name, value)
  assert distributed.initialize() == "single"


def test_process_rows_cover_the_batch_once():
  training = step_training(jax.devices())
  assert distributed.process_batch_rows(training.batch_sharding, GLOBAL_BATCH) == slice(0, 8)


def test_when_a_process_dies_the_other_stops_naming_it(tmp_path):
  """Process 1 kills itself after 3 steps; process 0, waiting in the next step's collectives,
  must stop within the heartbeat timeout (5 s here) with an error naming task 1."""
  address = f"localhost:{_free_port()}"
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO_ROOT,
         "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
  workers = [subprocess.Popen([sys.executable, "tests/distributed_worker.py", address, "2",
                               str(i), "3"], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL,
                              stderr=open(tmp_path / f"worker{i}.log", "w"))
             for i in range(2)]
  workers[1].wait(timeout=300)
  died = time.monotonic()
  assert workers[1].returncode == -9
  workers[0].wait(timeout=120)  # a hang would fail here
  stopped_after = time.monotonic() - died
  log = (tmp_path / "worker0.log").read_text()
  assert workers[0].returncode != 0
  # The coordination service names the dead task in one of two ways, depending on which of its
  # checks notices first.
  assert re.search(r"Task 1 heartbeat timeout|stopped sending heartbeats\):\s+1\b", log), \
      log[-3000:]
  assert stopped_after < 5 + 30  # the timeout, and the coordination service's polling
