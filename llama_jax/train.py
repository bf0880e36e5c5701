"""Training: `python -m llama_jax.train --config=configs/13b.py --workdir=DIR [--config.KEY=V]`.

The program (Trainer) that drives the step of llama_jax.train_step: data, checkpoints, metrics,
evaluation during training, safety rails, signals.
"""

from __future__ import annotations

import copy
import signal
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from absl import app, flags, logging
from ml_collections import config_flags
from tqdm import tqdm

from llama_jax import distributed
from llama_jax import metrics as metrics_lib
from llama_jax.checkpoint import Checkpoints, check_storage
from llama_jax.config import enable_compilation_cache, parse_flags, total_steps
from llama_jax.data import iterator_from_config
from llama_jax.eval.periodic import PeriodicEvaluation
from llama_jax.loop_state import LoopState, Rollback, SafetyRails
from llama_jax.model import ModelConfig
from llama_jax.optim import learning_rate_schedule, make_optimizer
from llama_jax.sharding import MeshRules, check_fits, logical_rules, make_mesh, with_shardings
from llama_jax.train_step import Batch, ShardedTraining, TrainState


def _bytes(tree) -> int:
  return sum(leaf.size * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


class Trainer:
  """The training program: data, sharded steps, checkpoints, metrics and the safety rails.

  The host-side loop state that a resumed run needs (LoopState: batches drawn from the loader,
  batches to skip, the recent losses the spike rail compares with, energy so far) is saved with
  every checkpoint, so a run killed and resumed continues exactly as the uninterrupted one.
  """

  def __init__(self, config, workdir: str | Path, devices: list[jax.Device] | None = None):
    self.config = config
    self.workdir = Path(workdir)
    self.model_config = ModelConfig.from_dict(config.model)
    self.total_steps = total_steps(config)
    batch_size = config.train.batch_size
    micro_batch = config.train.micro_batch_size or batch_size
    if batch_size % micro_batch:
      raise ValueError(f"train.batch_size={batch_size} is not a multiple of "
                       f"train.micro_batch_size={micro_batch}")
    mesh = make_mesh(config.mesh, devices)
    check_fits(self.model_config, dict(mesh.shape), micro_batch, config.mesh.sequence_parallel)
    schedule = learning_rate_schedule(config.optim, self.total_steps)
    self.training = ShardedTraining(
        self.model_config, make_optimizer(config.optim, self.total_steps),
        MeshRules(mesh, logical_rules(config.mesh.sequence_parallel)), schedule=schedule,
        micro_batches=batch_size // micro_batch)
    # Shapes, dtypes and shardings of the state (traced once): what checkpoints restore into.
    self.abstract_state = with_shardings(jax.eval_shape(self.training.init, jnp.int32(0)),
                                         self.training.state_shardings)
    self.evaluation = None
    if config.eval.tasks:
      self.evaluation = PeriodicEvaluation(config.eval, self.model_config, config.data.tokenizer,
                                           self.training.mesh_rules, self.abstract_state.params)
    self.data = iterator_from_config(config)
    check_storage(self.workdir, _bytes(self.abstract_state), config.checkpoint.keep)
    if jax.process_index() == 0:
      # What evaluation (llama_jax.eval --ckpt=WORKDIR) rebuilds the model and tokenizer from.
      (self.workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    self.checkpoints = Checkpoints(self.workdir, keep=config.checkpoint.keep,
                                   async_save=config.checkpoint.async_save)
    self.writer: metrics_lib.MetricsWriter | None = None
    self.energy: metrics_lib.EnergyMeter | None = None
    self.tokens_per_step = batch_size * self.model_config.context_length
    self.flops_per_step = metrics_lib.flops_per_token(self.model_config) * self.tokens_per_step
    self.peak_flops = metrics_lib.peak_flops_per_second(jax.devices()[0])
    self.rails = SafetyRails.from_config(config.train)
    self.stop_signal: int | None = None

  # --- state ---------------------------------------------------------------------------------

  def _restore_latest(self) -> tuple[TrainState, LoopState] | None:
    """The newest good checkpoint, with the data iterator put back where it was."""
    restored = self.checkpoints.restore_latest(self.abstract_state)
    if restored is None:
      return None
    state, data_state, progress = restored
    self.data.set_state(data_state)
    logging.info("restored %s/%d", self.checkpoints.directory, int(state.step))
    return state, LoopState.from_json(progress)

  def _save(self, state: TrainState, loop: LoopState) -> None:
    """Saves, or logs why it could not: training goes on and the next interval tries again."""
    loop.energy = self.energy.state()
    try:
      # Copies: an asynchronous save serialises them later, while the loop changes them.
      self.checkpoints.save(int(state.step), state, copy.deepcopy(self.data.get_state()),
                            loop.to_json())
    except Exception as error:  # a full disk, a flaky file system: whatever the storage raised
      loop.failed_saves += 1
      logging.error("checkpoint save at step %d failed (%s); the earlier checkpoints are kept "
                    "and the next interval tries again", int(state.step), error)

  def _wait_for_save(self, loop: LoopState) -> None:
    try:
      self.checkpoints.wait()
    except Exception as error:  # the asynchronous part of the last save failed
      loop.failed_saves += 1
      logging.error("checkpoint save failed while finishing (%s); the earlier checkpoints are "
                    "kept", error)

  def _start(self) -> tuple[TrainState, LoopState]:
    if restored := self._restore_latest():
      return restored
    return self.training.init(jnp.int32(self.config.train.seed)), LoopState()

  # --- the loop ------------------------------------------------------------------------------

  def _next_batch(self, loop: LoopState) -> Batch:
    """The next batch not marked to skip, as global arrays from this process's rows."""
    while True:
      rows = next(self.data)
      loop.batches_drawn += 1
      if loop.batches_drawn not in loop.skip_batches:
        local = {"inputs": rows["inputs"], "targets": rows["targets"]}
        return distributed.global_batch(self.training.batch_sharding, local,
                                         self.config.train.batch_size)
      logging.warning("skipping batch %d (rolled back over it)", loop.batches_drawn)

  def _rollback(self, rollback: Rollback, loop: LoopState) -> tuple[TrainState, LoopState]:
    self._wait_for_save(loop)
    logging.warning("%s: rolling back to the last checkpoint, skipping batches %s",
                    rollback.reason, rollback.batches)
    state, checkpointed = self._restore_latest()
    return state, loop.rolled_back_to(checkpointed, rollback.batches)

  def _log(self, state: TrainState, values: dict, loop: LoopState, step_seconds: float,
           evaluation: dict) -> None:
    step = int(state.step)
    devices = jax.device_count()
    record = {
        "step": step, "loss": values["loss"], "grad_norm": values["grad_norm"],
        "lr": values["lr"], "tokens": step * self.tokens_per_step,
        "tokens_per_s_per_device": self.tokens_per_step / step_seconds / devices,
        "mfu": (self.flops_per_step / step_seconds / devices / self.peak_flops
                if self.peak_flops else None),
        "step_seconds": step_seconds, "device_memory_bytes": metrics_lib.device_memory_in_use(),
        "skipped_updates": loop.skipped_updates, "rollbacks": loop.rollbacks,
        "failed_saves": loop.failed_saves,
        "bad_records_skipped": sum(self.data.bad_records().values()),
        **{f"sequences/{name}": n for name, n in self.data.sequences().items()},
        **self.energy.update(), **evaluation,
    }
    if self.writer:
      self.writer.write(step, record)

  def _on_signal(self, signum, _frame) -> None:
    logging.warning("signal %d: saving after this step, then exiting", signum)
    self.stop_signal = signum

  def run(self) -> dict:
    """Trains to the configured number of steps (or a stop signal); returns the last values."""
    previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    state, loop = self._start()
    energy = self.config.energy
    self.energy = metrics_lib.EnergyMeter(energy.watts_per_device, energy.pue,
                                          energy.tco2_per_mwh, state=loop.energy)
    if int(state.step) == 0:
      self._save(state, loop)  # step 0: a rollback always has somewhere to go
    if jax.process_index() == 0:
      # A resumed run writes its steps again from here; TensorBoard drops the old ones.
      self.writer = metrics_lib.MetricsWriter(self.workdir, purge_from_step=int(state.step) + 1)
    values = {}
    bar = tqdm(total=self.total_steps, initial=int(state.step), unit="step", dynamic_ncols=True,
               disable=jax.process_index() != 0)
    try:
      while int(state.step) < self.total_steps and self.stop_signal is None:
        batch = self._next_batch(loop)
        start = time.perf_counter()
        state, step_metrics = self.training.step(state, batch)
        values = {name: value.item() for name, value in jax.device_get(step_metrics).items()}
        seconds = time.perf_counter() - start
        self.checkpoints.poll()
        if rollback := self.rails.check(loop, values["loss"], values["skipped"]):
          state, loop = self._rollback(rollback, loop)
          bar.n = int(state.step)
          continue
        step = int(state.step)
        bar.update(step - bar.n)
        bar.set_postfix(loss=f"{values['loss']:.4f}", refresh=False)
        evaluation = {}
        if self.evaluation and self.evaluation.due(step, self.total_steps):
          evaluation = self.evaluation(state.params)
          logging.info("step %d evaluation: %s", step, evaluation)
        if step % self.config.train.log_every == 0 or step == self.total_steps or evaluation:
          self._log(state, values, loop, seconds, evaluation)
        if step % self.config.checkpoint.every_steps == 0 or step == self.total_steps:
          self._save(state, loop)
      if self.stop_signal is not None and int(state.step) not in self.checkpoints.steps():
        self._save(state, loop)
      self._wait_for_save(loop)
    finally:
      bar.close()
      for sig, handler in previous.items():
        signal.signal(sig, handler)
    return {**values, **self.energy.update(), "step": int(state.step),
            "stopped_by_signal": self.stop_signal}

  def close(self) -> None:
    self.checkpoints.close()
    self.data.close()
    if self.writer:
      self.writer.close()


def energy_summary(result: dict) -> str:
  """The run's footprint as the paper's Table 15 reports it."""
  return (f"step {result['step']}: {result['gpu_hours']:.4g} GPU-hours, {result['energy_mwh']:.4g} "
          f"MWh ({result['energy_source']} power, PUE included), {result['tco2eq']:.4g} tCO2eq")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  if config is None or workdir is None:
    raise app.UsageError("--config=FILE and --workdir=DIR are required")
  enable_compilation_cache()
  try:
    distributed.initialize_from_flags()
    trainer = Trainer(config, workdir)
  except ValueError as error:  # the config, mesh, data or work directory: the message says what
    raise app.UsageError(str(error)) from None
  try:
    result = trainer.run()
  finally:
    trainer.close()
  logging.info("finished at step %d: %s", result["step"], result)
  if jax.process_index() == 0:
    print(energy_summary(result))


if __name__ == "__main__":
  # Defined here, not on import, so that programs that import Trainer keep their own flags.
  config_flags.DEFINE_config_file("config", None, "config file, e.g. configs/13b.py")
  flags.DEFINE_string("workdir", None, "run directory: checkpoints, metrics.jsonl, tensorboard/; "
                      "a run there is resumed")
  app.run(main, flags_parser=parse_flags)
