"""Compiled for H100 and A100 on this CPU machine (llama_jax.gpu_compile): the flash kernels'
resources, what the GPU train step is made of, and the planner on GPU targets.

XLA's GPU compiler runs here without a GPU (JAX's CUDA plugin, the gpu-compile extra that the test
extra includes); nothing is executed on a GPU and nothing here measures speed.
"""

import json
import math
import os
import re
import subprocess
import sys
from collections import Counter

import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import REPO_ROOT

from benchmarks import kernel_resources
from llama_jax import gpu_compile
from llama_jax.attention import dot_product_attention
from llama_jax.kernels.flash_attention import BlockSizes, Tiling
from llama_jax.model import ModelConfig
from llama_jax.plan import plan_mesh
from llama_jax.sharding import MeshRules, logical_rules, make_mesh
from llama_jax.train_step import ShardedTraining

KERNELS = ["flash_attention_dkv", "flash_attention_dq", "flash_attention_forward"]
# configs/1b.py's layer shape (head_dim 128) at a few layers, a short context and vocabulary:
# 8 heads so that tensor=8 splits them.
STEP_CONFIG = ModelConfig(vocab_size=1536, dim=1024, n_layers=2, n_heads=8, ffn_dim=512,
                          context_length=256)
BATCH = 8


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("gpu", sorted(gpu_compile.GPUS))
def test_default_tilings_do_not_spill(gpu, head_dim):
  kernels = gpu_compile.flash_attention_resources(gpu, head_dim)
  assert sorted(k.name for k in kernels) == KERNELS
  for kernel in kernels:
    assert kernel.spill_bytes == 0 and not kernel.warnings, kernel
    assert kernel.registers <= 255 and kernel.blocks_per_sm >= 1, kernel
    assert kernel.grid[1:] == (4, 16)  # (blocks, batch, heads) at the default (4, 2048, 16)


def test_a_spilling_tiling_is_reported():
  # The Hopper dk/dv tiling before tuning: two float32 [128, 128] accumulators over 128 threads
  # need 256 registers a thread before anything else, so ptxas spills.
  old = Tiling(32, 128, num_warps=4, num_stages=3)
  kernels = {k.name: k for k in gpu_compile.flash_attention_resources(
      "h100", 128, BlockSizes(Tiling(128, 64, 8, 3), Tiling(128, 32, 4, 3), old))}
  assert kernels["flash_attention_dkv"].registers == 255
  assert kernels["flash_attention_dkv"].spill_bytes > 1000


def test_occupancy_follows_cudas_rules():
  h100 = gpu_compile.gpu_limits("h100")
  assert (h100.sm_count, h100.shared_memory_per_sm) == (132, 233472)
  # 255 registers x 128 threads: 8192 registers a warp, 32768 a block: two blocks fit.
  assert gpu_compile.blocks_per_sm(h100, 128, 255, 1024) == (2, "registers")
  assert gpu_compile.blocks_per_sm(h100, 256, 64, 100_000) == (2, "shared memory")
  assert gpu_compile.blocks_per_sm(h100, 1024, 32, 0) == (2, "threads")


def _gpu_step(mesh_sizes, config=STEP_CONFIG, sequence_parallel=True, gpu="h100"):
  devices = gpu_compile.gpu_devices(gpu, math.prod(mesh_sizes.values()))
  mesh = make_mesh(mesh_sizes, devices)
  training = ShardedTraining(config, optax.adamw(1e-3),
                             MeshRules(mesh, logical_rules(sequence_parallel)))
  state = jax.eval_shape(training.init, jnp.int32(0))
  tokens = jax.ShapeDtypeStruct((BATCH, config.context_length), jnp.int32)
  return training.step.lower(state, {"inputs": tokens, "targets": tokens}).compile()


def _with(**changes) -> ModelConfig:
  return ModelConfig(**{**STEP_CONFIG.__dict__, **changes})


def _flash_kernels(hlo: str) -> Counter:
  assert hlo.count('custom_call_target="__gpu$xla.gpu.triton"') == sum(
      Counter(re.findall(r'name = "(flash_attention_\w+)"', hlo)).values())
  return Counter(re.findall(r'name = "(flash_attention_\w+)"', hlo))


def _score_matrices(hlo: str, seq: int) -> list[str]:
  """Buffers whose last two dimensions are [seq, seq]: attention weights."""
  return re.findall(rf"\w+\[[\d,]*\b{seq},{seq}\]", hlo)


@pytest.mark.parametrize("gpu", sorted(gpu_compile.GPUS))
def test_gpu_step_runs_the_flash_kernels_and_no_score_matrix(gpu):
  # attention="auto" (the default) on a GPU target, compiled from this CPU host: the Triton
  # kernels, not their interpret-mode loops, and never a [heads, seq, seq] buffer.
  hlo = _gpu_step({"data": 1, "fsdp": 1, "tensor": 1}, _with(attention="auto"), gpu=gpu).as_text()
  # Each kernel once: save_linear keeps the forward kernel's output for the backward kernels.
  assert _flash_kernels(hlo) == {"flash_attention_forward": 1, "flash_attention_dq": 1,
                                 "flash_attention_dkv": 1}
  assert not _score_matrices(hlo, STEP_CONFIG.context_length)
  # The check can fail: the plain XLA attention does hold the scores.
  xla = _gpu_step({"data": 1, "fsdp": 1, "tensor": 1}, _with(attention="xla"), gpu=gpu).as_text()
  assert not _flash_kernels(xla) and _score_matrices(xla, STEP_CONFIG.context_length)


def test_auto_attention_follows_the_platform_it_is_lowered_for():
  q = jax.ShapeDtypeStruct((1, 128, 2, 64), jnp.bfloat16)
  lowered = {platform: jax.jit(dot_product_attention).trace(q, q, q).lower(
      lowering_platforms=(platform,)).as_text() for platform in ("cuda", "cpu")}
  assert lowered["cuda"].count("xla.gpu.triton(") == 1
  assert "triton" not in lowered["cpu"]
  # What the kernel does not take (head_dim 48, float16) stays plain XLA on a GPU too.
  for shape, dtype in (((1, 128, 2, 48), jnp.bfloat16), ((1, 128, 2, 64), jnp.float16)):
    x = jax.ShapeDtypeStruct(shape, dtype)
    assert "triton" not in jax.jit(dot_product_attention).trace(x, x, x).lower(
        lowering_platforms=("cuda",)).as_text()


def _dots(hlo: str) -> int:
  return len(re.findall(r"= \S+ dot\(", hlo))


def test_save_linear_recomputes_no_matmul_in_the_backward_pass():
  hlo = {remat: _gpu_step({"data": 1, "fsdp": 1, "tensor": 1}, _with(remat=remat, attention="auto"))
         .as_text() for remat in ("none", "save_linear", "full")}
  dots = {remat: _dots(text) for remat, text in hlo.items()}
  assert dots["save_linear"] == dots["none"] < dots["full"], dots
  forward_kernels = {remat: _flash_kernels(text)["flash_attention_forward"]
                     for remat, text in hlo.items()}
  assert forward_kernels == {"none": 1, "save_linear": 1, "full": 2}


_COLLECTIVE = re.compile(r"^\s*(?:ROOT )?%\S+ = (.*?) (all-gather|reduce-scatter|all-reduce)"
                         r"(-start)?\(", re.MULTILINE)
_SHAPE = re.compile(r"(\w+)\[([\d,]*)\]")


def _collectives(hlo: str) -> dict[str, list[tuple[str, tuple[int, ...]]]]:
  """Collective kind -> (dtype, result shape) of each, from the compiled GPU program. An async
  all-gather or reduce-scatter's type is (operands, results); an all-reduce's is its results."""
  found = {}
  for match in _COLLECTIVE.finditer(hlo):
    shapes = [(dtype, tuple(int(d) for d in dims.split(",") if d))
              for dtype, dims in _SHAPE.findall(match.group(1))]
    if match.group(2) != "all-reduce" and match.group(3):
      shapes = shapes[len(shapes) // 2:]
    found.setdefault(match.group(2), []).extend(shapes)
  return found


def test_fsdp_gathers_weights_and_reduce_scatters_gradients():
  collectives = _collectives(_gpu_step({"data": 1, "fsdp": 8, "tensor": 1}).as_text())
  wq, wq_shard = (1024, 8, 128), (128, 8, 128)  # one layer's wq, whole and split over fsdp
  assert ("bf16", wq) in collectives["all-gather"]
  assert ("bf16", wq_shard) in collectives["reduce-scatter"]
  # Every gradient is reduce-scattered, the embedding table's too (gathered over fsdp for the
  # lookup): only the loss and gradient-norm partials are all-reduced.
  table_shard = STEP_CONFIG.vocab_size * STEP_CONFIG.dim // 8  # embedding and output layer
  assert sum(math.prod(s) == table_shard for _, s in collectives["reduce-scatter"]) == 2
  assert all(math.prod(s) <= 16 for _, s in collectives.get("all-reduce", [])), collectives


def test_sequence_parallelism_gathers_and_scatters_along_the_sequence():
  seq, dim = STEP_CONFIG.context_length, STEP_CONFIG.dim
  collectives = _collectives(_gpu_step({"data": 1, "fsdp": 1, "tensor": 8}).as_text())
  whole, split = (BATCH, seq, dim), (BATCH, seq // 8, dim)
  assert sum(s == whole for _, s in collectives["all-gather"]) >= 2 * STEP_CONFIG.n_layers
  assert sum(s == split for _, s in collectives["reduce-scatter"]) >= 2 * STEP_CONFIG.n_layers
  assert whole not in [s for _, s in collectives.get("all-reduce", [])]
  # Vocabulary parallelism: no collective carries the whole vocabulary.
  assert not [s for kind in collectives.values() for _, s in kind
              if STEP_CONFIG.vocab_size in s]


def test_plan_on_gpus_agrees_with_a_direct_compile(load_config):
  config = load_config("1b")
  config.model.update(STEP_CONFIG.__dict__)
  mesh_sizes = {"data": 1, "fsdp": 8, "tensor": 1}
  row = plan_mesh(config, mesh_sizes, gpu_compile.gpu_devices("h100", 8), BATCH)
  memory = _gpu_step(mesh_sizes).memory_analysis()
  peak = (memory.argument_size_in_bytes + memory.output_size_in_bytes
          + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  assert abs(row["total"] - peak) <= 0.05 * peak, (row, peak)
  assert row["params"] == row["gradients"] and row["activations_and_temporaries"] > 0


def _run(code: str, hide_plugin: bool, tmp_path) -> subprocess.CompletedProcess:
  env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
  if hide_plugin:
    # A regular package named jax_plugins first on the path hides the installed namespace
    # package, as if the CUDA plugin were not installed.
    (tmp_path / "jax_plugins").mkdir(exist_ok=True)
    (tmp_path / "jax_plugins" / "__init__.py").write_text("")
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{REPO_ROOT}"
  return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                        capture_output=True, text=True, timeout=300, check=True)


def test_the_plugin_changes_nothing_on_the_cpu(tmp_path):
  code = """
import jax, jax.numpy as jnp, numpy as np, optax
from llama_jax import gpu_compile
from llama_jax.model import ModelConfig
from llama_jax.sharding import MeshRules, logical_rules, make_mesh
from llama_jax.train_step import ShardedTraining
config = ModelConfig(vocab_size=256, dim=64, n_layers=2, n_heads=2, ffn_dim=128,
                     context_length=32, dtype="float32", attention="auto")
mesh = make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
training = ShardedTraining(config, optax.adamw(1e-3), MeshRules(mesh, logical_rules(True)))
tokens = np.random.default_rng(0).integers(0, 256, (8, 32)).astype(np.int32)
_, metrics = training.step(training.init(jnp.int32(0)), {"inputs": tokens, "targets": tokens})
print(jax.default_backend(), gpu_compile.gpu_compiler_installed(), float(metrics["loss"]).hex())
"""
  with_plugin = _run(code, False, tmp_path).stdout.split()
  without = _run(code, True, tmp_path).stdout.split()
  assert with_plugin[:2] == ["cpu", "True"] and without[:2] == ["cpu", "False"]
  assert with_plugin[2] == without[2]  # the same loss, bit for bit


def test_plan_falls_back_to_the_cpu_estimate_and_says_so(tmp_path):
  code = ("import sys; from llama_jax import plan; from absl import app; "
          "sys.argv = ['plan', '--config=configs/tiny.py', '--devices=1', '--mesh=data=1,fsdp=1,"
          "tensor=1']; app.run(plan.main, flags_parser=plan.parse_flags)")
  with_plugin = _run(code, False, tmp_path).stdout
  without = _run(code, True, tmp_path).stdout
  assert "compiled by XLA's GPU compiler for NVIDIA A100-SXM4-80GB" in with_plugin
  assert "compiled by the CPU compiler, an estimate" in without
  assert "pip install -e '.[gpu-compile]'" in without
  for out in (with_plugin, without):
    assert re.search(r"\(1, 1, 1\)( +\d+\.\d\d){5} +yes", out), out


def test_kernel_resources_benchmark_prints_a_row_per_kernel(capsys):
  kernel_resources.main(["--gpus=a100", "--head_dims=64", "--shape=1x256x2"])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert sorted(row["kernel"] for row in rows) == ["dkv", "dq", "forward"]
  for row in rows:
    assert row["gpu"] == "a100" and row["spill_bytes"] == 0 and row["registers"] > 0
  for flag, message in (("--gpus=h200", "h200"), ("--head_dims=96", "96"),
                        ("--head_dims=x", "comma-separated integers")):
    with pytest.raises(SystemExit):
      kernel_resources.main([flag])
    assert message in capsys.readouterr().err
