"""Will it fit? Per-device memory of the train step on a mesh of any size, without the devices.

  python -m llama_jax.plan --config=configs/65b.py --devices=2048 --device_memory_gb=80 \
      [--mesh=data=1,fsdp=-1,tensor=8] [--gpu=a100|h100] [--gpus_per_node=8]

The train step is compiled ahead of time by XLA's GPU compiler for `--devices` GPUs of kind
`--gpu` in nodes of `--gpus_per_node` (llama_jax.gpu_compile: no GPU needed, JAX's CUDA plugin
is): per device, the parameters, optimizer state and gradients are counted exactly from their
shard shapes, and the GPU buffer assignment gives the activations and other temporaries (its temp
bytes less the gradients, which live there). Without the plugin the step is compiled for simulated
CPU devices instead, and the output says so: the CPU compiler's activation figure is an estimate,
about twice the GPU's on configs/1b.py (docs/results/sharding.md).

Without --mesh, every mesh with `tensor` inside one node is tried, pure FSDP and FSDP inside a node
with data parallelism across nodes, and the one that fits with the least estimated communication
per step is recommended. The communication model counts bytes per device per step over the link
each axis crosses (see `communication_seconds`).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from llama_jax import gpu_compile
from llama_jax.config import load_config_file, parse_flags, total_steps
from llama_jax.model import ModelConfig, abstract_model, count_params
from llama_jax.optim import make_optimizer
from llama_jax.sharding import MeshRules, check_fits, logical_rules, make_mesh, parse_mesh
from llama_jax.train_step import ShardedTraining

_CONFIG = flags.DEFINE_string("config", None, "config file, e.g. configs/65b.py", required=True)
_DEVICES = flags.DEFINE_integer("devices", None, "GPUs in the run", required=True)
_MEMORY = flags.DEFINE_float("device_memory_gb", 80.0, "memory per GPU, GB (1e9 bytes)")
_MESH = flags.DEFINE_string("mesh", None, "data=D,fsdp=F,tensor=T (-1: the rest); default: try "
                            "the candidates and recommend one")
_GPU = flags.DEFINE_enum("gpu", "a100", sorted(gpu_compile.GPUS), "the GPU compiled for (XLA's "
                         "target config), and its link speeds for the communication estimate")
_GPUS_PER_NODE = flags.DEFINE_integer("gpus_per_node", 8, "GPUs joined by NVLink")
_BATCH = flags.DEFINE_integer("batch_size", None, "sequences per step (default: the config's "
                              "train.batch_size)")

# Per-GPU link bandwidth, one direction, GB/s: NVLink 3 (A100: 600 GB/s both ways) and NVLink 4
# (H100 SXM: 900 GB/s both ways); one InfiniBand HDR (200 Gb/s) or NDR (400 Gb/s) adapter per GPU
# (NVIDIA's A100 and H100 data sheets and DGX reference designs).
LINKS_GB_S = {"a100": {"nvlink": 300.0, "network": 25.0},
              "h100": {"nvlink": 450.0, "network": 50.0}}


def candidate_meshes(model_config, devices: int, gpus_per_node: int) -> list[dict[str, int]]:
  """`tensor` up to a node; the rest FSDP (as far as the model dimension divides), or FSDP in a
  node and data parallelism across nodes."""
  meshes = []
  for tensor in (1, 2, 4, 8, 16):
    if tensor > min(gpus_per_node, devices) or devices % tensor or any(
        getattr(model_config, f) % tensor for f in ("n_heads", "ffn_dim", "vocab_size")):
      continue
    # FSDP splits the model dimension, so it takes the largest share of the devices that divides
    # it (all of them for power-of-two sizes); data parallelism takes what is left.
    fsdp = math.gcd(devices // tensor, model_config.dim)
    meshes.append({"data": devices // (tensor * fsdp), "fsdp": fsdp, "tensor": tensor})
    in_node = gpus_per_node // tensor
    if 1 < devices // (tensor * in_node) and devices % (tensor * in_node) == 0:
      meshes.append({"data": devices // (tensor * in_node), "fsdp": in_node, "tensor": tensor})
  return meshes


def communication_seconds(model_config, params: int, mesh: dict[str, int], batch_tokens: int,
                          gpus_per_node: int, links: dict[str, float]) -> float:
  """Bytes each device sends per step over the link its axis crosses, divided by that link's speed.

  Collectives move the compute dtype (bfloat16): XLA casts each weight before gathering it, and
  reduces the gradient of that cast (seen in the partitioned HLO of the step). FSDP gathers every
  weight twice (forward, and again for the backward) and reduce-scatters the gradient: 3 x
  (f-1)/f of a tensor shard's weights. Data parallelism all-reduces the gradient shard:
  2 x (d-1)/d. Tensor parallelism with sequence parallelism moves the [tokens, dim] residual 10
  times per layer (2 all-gathers and 2 reduce-scatters forward, 2 all-gathers recomputed, 4 in the
  backward): 10 x (t-1)/t. Collectives are assumed not to overlap with compute, so this is an
  upper bound on the exposed time, for comparing meshes.
  """
  data, fsdp, tensor = mesh["data"], mesh["fsdp"], mesh["tensor"]
  compute_bytes = jnp.dtype(model_config.dtype).itemsize
  tensor_shard_bytes = compute_bytes * params / tensor
  fsdp_link = "nvlink" if tensor * fsdp <= gpus_per_node else "network"
  tokens_per_group = batch_tokens / (data * fsdp)
  seconds = 3 * (fsdp - 1) / fsdp * tensor_shard_bytes / (links[fsdp_link] * 1e9)
  seconds += 2 * (data - 1) / data * tensor_shard_bytes / fsdp / (links["network"] * 1e9)
  seconds += (10 * (tensor - 1) / tensor * model_config.n_layers * tokens_per_group
              * model_config.dim * compute_bytes / (links["nvlink"] * 1e9))
  return seconds


def _state_bytes(tree) -> int:
  """Bytes of one device's shards of an abstract tree with shardings."""
  return sum(int(np.prod(leaf.sharding.shard_shape(leaf.shape))) * leaf.dtype.itemsize
             for leaf in jax.tree.leaves(tree))


def plan_mesh(config, mesh_sizes: dict[str, int], devices: Sequence[jax.Device],
              batch_size: int) -> dict:
  """Compiles the step for `mesh_sizes` on `devices` (GPUs from llama_jax.gpu_compile, or
  simulated CPU devices); per-device bytes by kind."""
  model_config = ModelConfig.from_dict(config.model)
  mesh = make_mesh(mesh_sizes, devices)
  sizes = dict(mesh.shape)
  check_fits(model_config, sizes, batch_size, config.mesh.sequence_parallel)
  mesh_rules = MeshRules(mesh, logical_rules(config.mesh.sequence_parallel))
  training = ShardedTraining(model_config, make_optimizer(config.optim, total_steps(config)),
                             mesh_rules)
  state = jax.eval_shape(training.init, jnp.int32(0))
  tokens = jax.ShapeDtypeStruct((batch_size, model_config.context_length), jnp.int32)
  compiled = training.step.lower(state, {"inputs": tokens, "targets": tokens}).compile()
  memory = compiled.memory_analysis()
  params = _state_bytes(state.params)
  gradients = params  # float32 like the parameters, sharded the same way
  return {"mesh": sizes, "params": params, "optimizer_state": _state_bytes(state.opt_state),
          "gradients": gradients,
          "activations_and_temporaries": max(0, memory.temp_size_in_bytes - gradients),
          "total": memory.argument_size_in_bytes + memory.temp_size_in_bytes}


def main(argv: list[str]) -> None:
  del argv
  config = load_config_file(_CONFIG.value)
  model_config = ModelConfig.from_dict(config.model)
  batch_size = _BATCH.value or config.train.batch_size
  batch_tokens = batch_size * model_config.context_length
  params = count_params(abstract_model(model_config))
  try:
    meshes = ([parse_mesh(_MESH.value)] if _MESH.value else
              candidate_meshes(model_config, _DEVICES.value, _GPUS_PER_NODE.value))
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  try:
    devices = gpu_compile.gpu_devices(_GPU.value, _DEVICES.value, _GPUS_PER_NODE.value)
    compiler = f"XLA's GPU compiler for {devices[0].device_kind}"
  except gpu_compile.GpuCompilerMissing:
    devices = jax.devices("cpu")[:_DEVICES.value]
    compiler = ("the CPU compiler, an estimate (about twice the GPU's activations): "
                + gpu_compile.INSTALL_HINT)
  except ValueError as error:
    raise app.UsageError(str(error)) from None
  print(f"{_CONFIG.value}: {params / 1e9:.2f}B parameters, batch {batch_size} x "
        f"{model_config.context_length} = {batch_tokens:,} tokens, {_DEVICES.value} "
        f"devices of {_MEMORY.value:g} GB; per device, GB (1e9 bytes), compiled by {compiler}:")
  print(f"{'mesh (data, fsdp, tensor)':>26} {'params':>7} {'optim':>7} {'grads':>7} "
        f"{'activ.':>7} {'total':>7} {'fits':>5} {'comm s/step':>12}")
  rows = []
  for mesh_sizes in meshes:
    try:
      row = plan_mesh(config, mesh_sizes, devices, batch_size)
    except ValueError as error:
      print(f"{str(tuple(mesh_sizes.values())):>26}  does not fit the model: {error}")
      continue
    row["fits"] = row["total"] <= _MEMORY.value * 1e9
    row["comm_seconds"] = communication_seconds(model_config, params, row["mesh"], batch_tokens,
                                                _GPUS_PER_NODE.value, LINKS_GB_S[_GPU.value])
    rows.append(row)
    gb = [row[k] / 1e9 for k in ("params", "optimizer_state", "gradients",
                                 "activations_and_temporaries", "total")]
    print(f"{str(tuple(row['mesh'].values())):>26} " + " ".join(f"{v:7.2f}" for v in gb)
          + f" {'yes' if row['fits'] else 'no':>5} {row['comm_seconds']:12.2f}")
  fitting = [row for row in rows if row["fits"]]
  if fitting:
    best = min(fitting, key=lambda row: row["comm_seconds"])
    print("recommended: " + ",".join(f"{k}={v}" for k, v in best["mesh"].items()))
  else:
    print("recommended: none fits; use more devices, a smaller batch per step (gradient "
          "accumulation) or model.remat=full")


if __name__ == "__main__":
  # Without the GPU compiler, the simulated CPU devices must be asked for before JAX starts its
  # CPU backend.
  devices_flag = [a for a in sys.argv if a.startswith("--devices=")]
  if devices_flag and not gpu_compile.gpu_compiler_installed():
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                               f"device_count={devices_flag[-1].split('=', 1)[1]}")
  jax.config.update("jax_platforms", "cpu")
  app.run(main, flags_parser=parse_flags)
