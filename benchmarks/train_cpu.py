"""The training step on the CPU beside PyTorch's: python -m benchmarks.train_cpu
    [--config=configs/tiny.py] [--vocab_size=N] [--batch_size=N] [--threads=1|2] [--rounds=5]
    [--steps=5] [--config.KEY=VALUE ...]

Two sides on the same model shape and the same random batch (the config's batch size x context
length; float32 on the PyTorch side):
  jax    the trainer's own compiled step (llama_jax.train_step.ShardedTraining on one CPU device,
         with the config's optimizer, schedule, remat policy and dtype), called as Trainer.run
         calls it;
  torch  transformers' LlamaForCausalLM built from the same hyperparameters (hidden size, layers,
         heads, vocabulary, intermediate size, RMSNorm eps, RoPE theta, untied embeddings) with
         torch.optim.AdamW of the same betas, eps and weight decay (the norm scales not decayed,
         as ours; the learning rate constant at the peak), the gradients clipped to the same
         global norm: forward, cross-entropy, loss.backward(), clip, step, zero_grad.
Each round starts one subprocess per side, both pinned (os.sched_setaffinity) to the same first
--threads cores, their thread pools sized to them (XLA: Eigen single-threaded for one thread;
torch.set_num_threads). Each runs its first step (tracing and compiling included) alone, then the
two take turns, one step at a time, for --steps steps each (the other waiting idle), so that load
from elsewhere on the machine falls on both alike; the side that goes first swaps every round.
Prints one JSON object per side and round (median step, tokens/s, first step), then a summary:
the median over rounds of the ratio jax tokens/s / torch tokens/s, and each side's medians.
--config.KEY=VALUE overrides a config value on both sides (a Python literal, else a string).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SIDES = ("jax", "torch")
# Between turns: thread pools spin a while after their work (OpenMP's, Eigen's) before they sleep;
# the other side's step should not share the cores with them.
PAUSE_SECONDS = 0.3


def _batch(model_config, batch_size: int) -> tuple:
  """The same random (inputs, targets) int32 [batch, seq] on both sides."""
  import numpy as np

  seq = model_config.context_length
  tokens = np.random.default_rng(0).integers(0, model_config.vocab_size, (batch_size, seq + 1),
                                             dtype=np.int32)
  return tokens[:, :-1], tokens[:, 1:]


def _jax_side(config, inputs, targets):
  """The trainer's step, as Trainer builds it, on one device; a call returns the loss."""
  import jax
  import jax.numpy as jnp

  from llama_jax.config import total_steps
  from llama_jax.model import ModelConfig
  from llama_jax.optim import learning_rate_schedule, make_optimizer
  from llama_jax.sharding import MeshRules, logical_rules, make_mesh
  from llama_jax.train_step import ShardedTraining

  steps_in_run = total_steps(config)
  mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  training = ShardedTraining(
      ModelConfig.from_dict(config.model), make_optimizer(config.optim, steps_in_run),
      MeshRules(mesh, logical_rules(config.mesh.sequence_parallel)),
      schedule=learning_rate_schedule(config.optim, steps_in_run))
  state = training.init(jnp.int32(0))
  batch = {"inputs": jax.device_put(inputs, training.batch_sharding),
           "targets": jax.device_put(targets, training.batch_sharding)}

  def step() -> float:
    nonlocal state
    state, metrics = training.step(state, batch)
    return jax.device_get(metrics)["loss"].item()

  return step, {"dtype": config.model.dtype, "remat": config.model.remat}


def _torch_side(config, inputs, targets, threads: int):
  """The same step in PyTorch; a call returns the loss."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  torch.set_num_threads(threads)
  torch.manual_seed(0)
  model_config, optim = config.model, config.optim
  model = LlamaForCausalLM(LlamaConfig(
      vocab_size=model_config.vocab_size, hidden_size=model_config.dim,
      intermediate_size=model_config.ffn_dim, num_hidden_layers=model_config.n_layers,
      num_attention_heads=model_config.n_heads, num_key_value_heads=model_config.n_heads,
      max_position_embeddings=model_config.context_length, rms_norm_eps=model_config.norm_eps,
      rope_theta=model_config.rope_theta, tie_word_embeddings=False,
      torch_dtype=torch.float32)).train()
  # The norm scales are the only vectors: not decayed, as llama_jax.optim.decay_mask.
  params = list(model.parameters())
  optimizer = torch.optim.AdamW(
      [{"params": [p for p in params if p.ndim > 1], "weight_decay": optim.weight_decay},
       {"params": [p for p in params if p.ndim == 1], "weight_decay": 0.0}],
      lr=optim.peak_lr, betas=(optim.b1, optim.b2), eps=optim.eps)
  inputs, targets = torch.from_numpy(inputs).long(), torch.from_numpy(targets).long()

  def step() -> float:
    logits = model(input_ids=inputs).logits
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, optim.grad_clip_norm)
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()

  return step, {"dtype": "float32", "attention": model.config._attn_implementation}


def _pin(threads: int) -> None:
  """This process on the first `threads` cores, its thread pools sized to them; before jax or
  torch is imported, which size their pools on import."""
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:threads])
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["OMP_NUM_THREADS"] = str(threads)
  if threads == 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen"
                               "=false intra_op_parallelism_threads=1").strip()


def _serve(args, overrides: list[str]) -> None:
  """One side, in this (pinned) process: builds and runs the first step, prints a JSON line
  with its seconds, then runs one step per line read from stdin and prints its seconds."""
  _pin(args.threads)
  from benchmarks.train_throughput import _override
  from llama_jax.config import load_config_file

  config = load_config_file(args.config)
  if args.vocab_size:
    config.model.vocab_size = args.vocab_size
  for arg in overrides:
    _override(config, *arg.removeprefix("--config.").split("=", 1))
  batch_size = args.batch_size or config.train.batch_size
  inputs, targets = _batch(config.model, batch_size)
  if args.side == "jax":
    step, info = _jax_side(config, inputs, targets)
  else:
    step, info = _torch_side(config, inputs, targets, args.threads)
  start = time.perf_counter()
  loss = step()
  print(json.dumps({"first_step_seconds": time.perf_counter() - start, "loss": loss,
                    "batch_size": batch_size, "vocab_size": config.model.vocab_size,
                    "seq": config.model.context_length, **info}), flush=True)
  for _ in sys.stdin:
    start = time.perf_counter()
    step()
    print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


def _round(round_: int, order: tuple[str, ...], command: list[str], args) -> dict[str, dict]:
  """One round: both sides started (and their first steps run) one after the other, then
  --steps steps each, taking turns."""
  workers, rows = {}, {}
  try:
    for side in order:
      workers[side] = subprocess.Popen([*command, f"--side={side}"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
      rows[side] = {"benchmark": "train_cpu", "side": side, "round": round_,
                    "config": args.config, "threads": args.threads,
                    **json.loads(workers[side].stdout.readline())}
    seconds = {side: [] for side in order}
    for _ in range(args.steps):
      for side in order:
        time.sleep(PAUSE_SECONDS)
        workers[side].stdin.write("step\n")
        workers[side].stdin.flush()
        seconds[side].append(json.loads(workers[side].stdout.readline())["seconds"])
  finally:
    for worker in workers.values():
      worker.stdin.close()
      worker.wait()
  for side, row in rows.items():
    step_seconds = statistics.median(seconds[side])
    row.update(tokens_per_second=round(row["batch_size"] * row["seq"] / step_seconds, 1),
               step_seconds=round(step_seconds, 4),
               first_step_seconds=round(row["first_step_seconds"], 3), loss=round(row["loss"], 4))
  return rows


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default="configs/tiny.py")
  parser.add_argument("--vocab_size", type=int, default=None, help="default: the config's")
  parser.add_argument("--batch_size", type=int, default=None, help="default: the config's")
  parser.add_argument("--threads", type=int, default=1, help="cores (and threads) of each side")
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=5, help="timed steps per side and round")
  parser.add_argument("--side", choices=SIDES, default=None, help=argparse.SUPPRESS)
  args, overrides = parser.parse_known_args(argv)
  if bad := [arg for arg in overrides if not arg.startswith("--config.") or "=" not in arg]:
    parser.error(f"unrecognized arguments {bad} (config overrides are --config.KEY=VALUE)")
  if not 1 <= args.threads <= len(os.sched_getaffinity(0)):
    parser.error(f"--threads={args.threads}: this process may use "
                 f"{len(os.sched_getaffinity(0))} cores")
  if args.side:
    _serve(args, overrides)
    return
  command = [sys.executable, "-m", "benchmarks.train_cpu",
             *(argv if argv is not None else sys.argv[1:])]
  rows = {side: [] for side in SIDES}
  for round_ in range(args.rounds):
    order = SIDES if round_ % 2 == 0 else SIDES[::-1]
    for side, row in _round(round_, order, command, args).items():
      rows[side].append(row)
      print(json.dumps(row), flush=True)
  ratios = [j["tokens_per_second"] / t["tokens_per_second"]
            for j, t in zip(rows["jax"], rows["torch"], strict=True)]
  print(json.dumps({
      "benchmark": "train_cpu", "summary": True, "config": args.config,
      "vocab_size": rows["jax"][0]["vocab_size"], "threads": args.threads, "rounds": args.rounds,
      "median_ratio_jax_to_torch": round(statistics.median(ratios), 3),
      "ratios": [round(r, 3) for r in ratios],
      **{f"{side}_median_{name}": round(statistics.median(r[name] for r in rows[side]), 3)
         for side in SIDES for name in ("tokens_per_second", "first_step_seconds")}}), flush=True)


if __name__ == "__main__":
  main()
