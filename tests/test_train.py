"""The training program: accumulation, skipped updates, rollbacks, signals, exact resume."""

import json
import shutil
import signal
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llama_jax import model as model_lib
from llama_jax import train_step as train_step_lib
from llama_jax.checkpoint import CHECKSUMS
from llama_jax.metrics import read_metrics
from llama_jax.model import ModelConfig
from llama_jax.sharding import MeshRules, logical_rules, make_mesh
from llama_jax.testing.training_runs import (
  SMALL_TINY,
  SOURCES,
  VOCAB,
  config_flags,
  losses,
  start_training,
  wait_for_step,
)
from llama_jax.train import Trainer
from llama_jax.train_step import ShardedTraining, cross_entropy, output_cross_entropy
from preprocessing.testing.token_shards import write_source

OVERRIDES = {
    **SMALL_TINY, "train.total_tokens": 24 * 8 * 32.0, "optim.peak_lr": 1e-2,
    "checkpoint.every_steps": 3, "train.spike_min_history": 5, "train.spike_window": 10,
}
TRAINED_SOURCES = ("wikipedia", "books")


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  """Two sources of repetitive documents (quickly learnt, so a random batch is a loss spike)."""
  root = tmp_path_factory.mktemp("tokens")
  rng = np.random.default_rng(0)
  for name in TRAINED_SOURCES:
    phrases = [rng.integers(3, VOCAB, 6) for _ in range(4)]
    documents = [np.concatenate([phrases[i % 4]] * int(rng.integers(2, 6)) + [[2]])
                 for i in range(400)]
    write_source(root / name, documents, num_shards=2, vocab_size=VOCAB)
  return root


def _config(load_config, shards, **overrides):
  config = load_config("tiny")
  for key, value in {**OVERRIDES, "data.dir": str(shards), **overrides}.items():
    section, name = key.split(".")
    config[section][name] = value
  for name in SOURCES:
    config.data.shares[name] = float(name in TRAINED_SOURCES)
  return config


def _train_process(workdir, shards, **overrides):
  flags = config_flags({**OVERRIDES, "data.dir": shards, **overrides}, TRAINED_SOURCES)
  return start_training(workdir, flags, open(workdir.parent / f"{workdir.name}.log", "w"))


# --- the step --------------------------------------------------------------------------------

def _step_training(micro_batches=1, devices=None):
  config = ModelConfig(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, ffn_dim=128,
                       context_length=16, dtype="float32")
  mesh = make_mesh({"data": 1, "fsdp": -1, "tensor": 1}, devices or jax.devices()[:1])
  # eps 1e-3: Adam's first update is about sign(g) for gradients far below eps = 1e-8, which
  # would magnify last-bit differences of the summation order (see test_sharding).
  return ShardedTraining(config, optax.adamw(1e-3, eps=1e-3),
                         MeshRules(mesh, logical_rules(True)), micro_batches=micro_batches)


def _tokens(batch=8, length=16):
  ids = np.random.default_rng(1).integers(0, VOCAB, (batch, length + 1)).astype(np.int32)
  return {"inputs": ids[:, :-1], "targets": ids[:, 1:]}


# One device is the same program as eight without the mesh: slow-marked (make test-all).
@pytest.mark.parametrize("devices", [pytest.param(1, marks=pytest.mark.slow), 8])
def test_micro_batches_give_the_whole_batch_step(devices):
  results = []
  for micro_batches in (1, 4):  # 4 micro-batches of 8 rows: one row per device on 8 devices
    training = _step_training(micro_batches, jax.devices()[:devices])
    state, metrics = training.step(training.init(jnp.int32(0)), _tokens(batch=32))
    results.append((jax.device_get(metrics), jax.tree.map(np.asarray, state.params)))
  (whole, whole_params), (micro, micro_params) = results
  np.testing.assert_allclose(micro["loss"], whole["loss"], rtol=1e-6)
  np.testing.assert_allclose(micro["grad_norm"], whole["grad_norm"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               micro_params, whole_params)


def test_a_nonfinite_step_leaves_the_state_unchanged():
  training = _step_training()
  state = training.init(jnp.int32(0))
  before = jax.tree.map(np.asarray, state)
  bad = _tokens()
  bad["inputs"][0, 3] = VOCAB  # outside the table: the embedding lookup yields NaN
  state, metrics = training.step(state, bad)
  assert bool(metrics["skipped"]) and not np.isfinite(float(metrics["loss"]))
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, state), before)
  state, metrics = training.step(state, _tokens())
  assert not bool(metrics["skipped"]) and int(state.step) == 1


def test_the_cpu_output_loss_gives_the_plain_loss_and_gradients():
  # 4 x 256 positions: two chunks of 128 positions (train.OUTPUT_LOSS_CHUNK_ROWS = 512 rows).
  keys = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(keys[0], (4, 256, 32))
  w = 0.2 * jax.random.normal(keys[1], (32, 300))
  targets = jax.random.randint(keys[2], (4, 256), 0, 300)

  def plain(x, w):
    return cross_entropy(jnp.einsum("btd,dv->btv", x, w), targets)

  loss, grads = jax.jit(jax.value_and_grad(
      lambda x, w: output_cross_entropy(x, w, targets), argnums=(0, 1)))(x, w)
  ref_loss, ref_grads = jax.jit(jax.value_and_grad(plain, argnums=(0, 1)))(x, w)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  np.testing.assert_allclose(jax.jit(output_cross_entropy)(x, w, targets), ref_loss, rtol=1e-6)
  for got, ref in zip(grads, ref_grads, strict=True):
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)


def test_the_cpu_loss_and_gradients_equal_the_other_backends(monkeypatch):
  training = _step_training()
  params, batch = training.init(jnp.int32(0)).params, _tokens()
  loss, grads = training.jit_loss_and_grads()(params, batch)
  # The formulation compiled for GPUs: the plain loss, autodiff's linear-layer gradients.
  gpu = types.SimpleNamespace(platform="gpu")
  monkeypatch.setattr(train_step_lib, "target_device", lambda: gpu)
  monkeypatch.setattr(model_lib, "target_device", lambda: gpu)
  ref_loss, ref_grads = training.jit_loss_and_grads()(params, batch)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads,
               ref_grads)


# --- the program ------------------------------------------------------------------------------

class _Injecting:
  """Wraps the data iterator, replacing the batches at given positions (counted in its state,
  so a restored iterator injects at the same positions again)."""

  def __init__(self, iterator, replace):
    self.iterator, self.replace, self.drawn = iterator, replace, 0

  def __next__(self):
    batch = next(self.iterator)
    self.drawn += 1
    return self.replace(self.drawn, batch)

  def get_state(self):
    return {"inner": self.iterator.get_state(), "drawn": self.drawn}

  def set_state(self, state):
    self.iterator.set_state(state["inner"])
    self.drawn = state["drawn"]

  def bad_records(self):
    return self.iterator.bad_records()

  def sequences(self):
    return self.iterator.sequences()

  def close(self):
    self.iterator.close()


def _run(config, workdir, replace=None, devices=None):
  trainer = Trainer(config, workdir, devices=devices or jax.devices()[:1])
  if replace:
    trainer.data = _Injecting(trainer.data, replace)
  try:
    return trainer.run()
  finally:
    trainer.close()


def test_nonfinite_steps_in_a_row_roll_back_and_skip_those_batches(load_config, shards, tmp_path):
  config = _config(load_config, shards)
  bad = {8, 9, 10}  # three in a row = train.max_consecutive_skips

  def poison(drawn, batch):
    if drawn in bad:
      batch = {**batch, "inputs": np.full_like(batch["inputs"], VOCAB)}
    return batch

  result = _run(config, tmp_path / "run", poison)
  assert result["step"] == 24
  records = read_metrics(tmp_path / "run" / "metrics.jsonl")
  assert records[-1]["rollbacks"] == 1
  assert all(np.isfinite(r["loss"]) for r in records)
  # Back at the checkpoint of step 6, batches 7.. are drawn again, 8-10 skipped: the run after
  # the rollback equals a run that never saw them.
  clean = _run(config, tmp_path / "clean", lambda drawn, batch: batch)
  assert clean["step"] == 24
  assert losses(tmp_path / "run")[7] == losses(tmp_path / "clean")[7]
  assert losses(tmp_path / "run")[24] != losses(tmp_path / "clean")[24]


def test_a_loss_spike_rolls_back_and_skips_the_batch(load_config, shards, tmp_path):
  config = _config(load_config, shards)
  rng = np.random.default_rng(5)

  def spike(drawn, batch):
    if drawn == 16:  # random tokens after the model has learnt the repetitive documents
      noise = rng.integers(3, VOCAB, batch["inputs"].shape).astype(np.int32)
      batch = {**batch, "inputs": noise, "targets": noise}
    return batch

  result = _run(config, tmp_path / "run", spike)
  records = read_metrics(tmp_path / "run" / "metrics.jsonl")
  assert result["step"] == 24 and records[-1]["rollbacks"] == 1
  logged = losses(tmp_path / "run")
  assert max(logged[s] for s in range(10, 25)) < 2 * np.mean([logged[s] for s in range(5, 15)])


def test_tensor_parallel_mesh_trains_like_one_device(load_config, shards, tmp_path):
  config = _config(load_config, shards, **{"train.total_tokens": 6 * 8 * 32.0,
                                           "checkpoint.every_steps": 100})
  _run(config, tmp_path / "one")
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 4, 2
  _run(config, tmp_path / "mesh", devices=jax.devices())
  one, mesh = losses(tmp_path / "one"), losses(tmp_path / "mesh")
  assert sorted(one) == sorted(mesh) == list(range(1, 7))
  np.testing.assert_allclose([mesh[s] for s in one], list(one.values()), rtol=1e-5)


def test_killed_and_resumed_run_has_the_same_losses_bitwise(shards, tmp_path):
  whole = _train_process(tmp_path / "whole", shards)
  assert whole.wait(timeout=300) == 0
  killed = _train_process(tmp_path / "killed", shards)
  wait_for_step(tmp_path / "killed", 14, killed)
  killed.kill()  # SIGKILL: no chance to save
  killed.wait()
  resumed = _train_process(tmp_path / "killed", shards)
  assert resumed.wait(timeout=300) == 0
  assert losses(tmp_path / "killed") == losses(tmp_path / "whole")  # floats compared exactly
  assert len(losses(tmp_path / "whole")) == 24


def test_sigterm_saves_and_exits_cleanly(shards, tmp_path):
  workdir = tmp_path / "run"
  process = _train_process(workdir, shards, **{"checkpoint.every_steps": 1000})
  wait_for_step(workdir, 4, process)
  process.send_signal(signal.SIGTERM)
  assert process.wait(timeout=120) == 0
  last_logged = max(losses(workdir))
  assert last_logged < 24
  saved = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert saved[-1] == last_logged  # the step it stopped at, beside step 0
  resumed = _train_process(workdir, shards, **{"checkpoint.every_steps": 1000})
  assert resumed.wait(timeout=300) == 0
  steps = [record["step"] for record in map(json.loads, open(workdir / "metrics.jsonl"))]
  assert steps == list(range(1, 25))  # resumed after the saved step: none replayed or missing


# --- faults: corrupt checkpoints, failing saves -----------------------------------------------

def _flip_a_byte(path):
  data = bytearray(path.read_bytes())
  data[len(data) // 2] ^= 0xFF
  path.write_bytes(bytes(data))


def _largest_state_file(step_dir):
  return max((p for p in (step_dir / "state").rglob("*") if p.is_file()),
             key=lambda p: p.stat().st_size)


# A truncated or missing file fails the same size/presence check as the others' CRC and
# checksum-table checks: slow-marked (make test-all).
@pytest.mark.parametrize("damage", [
    "flipped", pytest.param("truncated", marks=pytest.mark.slow),
    pytest.param("missing", marks=pytest.mark.slow), "no_checksums"])
def test_a_corrupt_latest_checkpoint_is_set_aside_and_the_one_before_used(
    load_config, shards, tmp_path, caplog, damage):
  config = _config(load_config, shards, **{"train.total_tokens": 9 * 8 * 32.0})
  _run(config, tmp_path / "whole")
  expected = losses(tmp_path / "whole")
  step_dir = tmp_path / "whole" / "checkpoints" / "9"
  target = _largest_state_file(step_dir)
  if damage == "flipped":
    _flip_a_byte(target)
  elif damage == "truncated":
    target.write_bytes(target.read_bytes()[:-100])
  elif damage == "missing":
    target.unlink()
  else:  # killed after orbax made the checkpoint final, before its checksums were written
    shutil.rmtree(step_dir / CHECKSUMS)
  result = _run(config, tmp_path / "whole")  # resumes: 9 is bad, so from 6, training 7-9 again
  assert result["step"] == 9
  assert "checkpoint 9 is corrupt" in caplog.text
  assert [p.name.split("-")[0] for p in (tmp_path / "whole" / "checkpoints" / "corrupt").iterdir()
          ] == ["9"]
  assert losses(tmp_path / "whole") == expected  # steps 7-9 again, bitwise the same


def test_failed_saves_are_logged_retried_and_keep_the_last_good_one(
    load_config, shards, tmp_path, monkeypatch, caplog):
  from llama_jax import checkpoint
  original = checkpoint.Checkpoints.save

  def save_fails_from_step_4(self, step, *args):
    if 4 <= step <= 9:
      raise OSError(28, "No space left on device")
    return original(self, step, *args)

  monkeypatch.setattr(checkpoint.Checkpoints, "save", save_fails_from_step_4)
  config = _config(load_config, shards, **{"train.total_tokens": 12 * 8 * 32.0})
  assert _run(config, tmp_path / "run")["step"] == 12
  assert caplog.text.count("checkpoint save at step") == 2  # steps 6 and 9
  records = read_metrics(tmp_path / "run" / "metrics.jsonl")
  assert records[-1]["failed_saves"] == 2
  saved = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert saved == [0, 3, 12]  # the last good one (3) survived the failures; 12 was retried


def test_a_config_error_is_one_message_without_a_traceback(tmp_path):
  process = start_training(tmp_path / "run", [], open(tmp_path / "run.log", "w"))
  assert process.wait(timeout=120) == 1
  log = (tmp_path / "run.log").read_text()
  assert "config.data.dir is not set: give --config.data.dir=DIR" in log
  assert "Traceback" not in log


def test_steps_on_the_command_line_and_synthetic_data_train_without_a_corpus(tmp_path):
  flags = [f"--config.{key}={value}" for key, value in SMALL_TINY.items()]
  process = start_training(tmp_path / "run", [*flags, "--config.train.steps=3",
                                              "--config.data.synthetic=true"],
                           open(tmp_path / "run.log", "w"))
  assert process.wait(timeout=180) == 0, (tmp_path / "run.log").read_text()[-3000:]
  records = read_metrics(tmp_path / "run" / "metrics.jsonl")
  assert [r["step"] for r in records] == [1, 2, 3]  # 3 steps, not tiny.py's total_tokens
  assert records[-1]["sequences/synthetic"] == 3 * SMALL_TINY["train.batch_size"]
  assert all(np.isfinite(r["loss"]) for r in records)
  both = start_training(tmp_path / "both", [*flags, "--config.train.steps=3",
                                            "--config.train.total_tokens=1e4",
                                            "--config.data.synthetic=true"],
                        open(tmp_path / "both.log", "w"))
  assert both.wait(timeout=120) == 1
  assert "give exactly one of train.steps (3) and train.total_tokens (10000.0)" in (
      tmp_path / "both.log").read_text()
