"""Compiling for a GPU on any machine: XLA's deviceless (ahead-of-time) compilation.

JAX's CUDA plugin compiles for a GPU that XLA's target config describes (`gpu_targets/`, shipped
for H100 and A100) without the GPU being there: `gpu_devices` gives compile-only devices of that
GPU, in nodes of `gpus_per_node`; a mesh over them and `jax.jit(f).lower(...).compile()` give the
GPU's program, its buffer assignment (`memory_analysis()`) and its HLO, exactly as on the GPU.
`compile_and_dump` keeps XLA's dump (the PTX of every kernel, the launch of each), and
`kernel_resources` reads from it what each kernel uses: registers and spills from ptxas (the CUDA
assembler of the nvidia-cuda-nvcc wheel), shared memory, grid and threads from XLA's thunk
sequence, and how many of its blocks fit on one SM.

Nothing here runs anything on a GPU: there is no autotuning and there are no timings. Installed by
`pip install -e '.[gpu-compile]'` (JAX's CUDA plugin at the project's jax version, and ptxas);
`make test` installs it. With JAX_PLATFORMS=cpu the plugin changes nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
from jax.experimental import topologies

from llama_jax.kernels.flash_attention import default_block_sizes, flash_attention

_TARGETS = Path(__file__).resolve().parent / "gpu_targets"
# --gpu names and XLA's target configs (gpu_targets/README.md gives their source).
GPUS = {"h100": "h100_sxm.txtpb", "a100": "a100_sxm_80.txtpb"}
INSTALL_HINT = ("compiling for a GPU without one needs JAX's CUDA plugin and ptxas: "
                "pip install -e '.[gpu-compile]' (make test installs them)")


class GpuCompilerMissing(RuntimeError):
  """JAX's CUDA plugin (or ptxas) is not installed."""


def _check_gpu(gpu: str) -> None:
  if gpu not in GPUS:
    raise ValueError(f"unknown GPU {gpu!r}; target configs are shipped for {sorted(GPUS)}")


def target_config(gpu: str) -> str:
  """XLA's GpuTargetConfigProto (text format) of `gpu`."""
  _check_gpu(gpu)
  return (_TARGETS / GPUS[gpu]).read_text()


@dataclasses.dataclass(frozen=True)
class GpuLimits:
  """Per-SM resources and device figures of a GPU, from its target config."""

  sm_count: int
  shared_memory_per_sm: int
  registers_per_sm: int
  threads_per_sm: int
  memory_bandwidth: float  # bytes/s
  # CUDA's per-SM block limit on compute capability 8.0 and 9.0, and the shared memory the runtime
  # reserves per block (CUDA C++ Programming Guide, "Compute Capabilities", table 21).
  blocks_per_sm: int = 32
  reserved_shared_memory_per_block: int = 1024


@functools.cache
def gpu_limits(gpu: str) -> GpuLimits:
  text = target_config(gpu)

  def field(name: str) -> str:
    match = re.search(rf"^\s*{name}: (\S+)", text, re.MULTILINE)
    if match is None:
      raise ValueError(f"{GPUS[gpu]} has no {name} field")
    return match.group(1)

  return GpuLimits(sm_count=int(field("core_count")),
                   shared_memory_per_sm=int(field("shared_memory_per_core")),
                   registers_per_sm=int(field("registers_per_core_limit")),
                   threads_per_sm=int(field("threads_per_core_limit")),
                   memory_bandwidth=float(field("memory_bandwidth")))


def gpu_compiler_installed() -> bool:
  """Whether JAX's CUDA plugin is installed (found without importing JAX's backends)."""
  return any(importlib.util.find_spec(f"jax_plugins.xla_cuda{version}") is not None
             for version in (12, 13))


@functools.cache
def gpu_devices(gpu: str, count: int = 1, gpus_per_node: int = 8) -> tuple[jax.Device, ...]:
  """`count` compile-only devices of GPU `gpu` ('h100' or 'a100'), `gpus_per_node` to a host
  (fewer when `count` is smaller): build a mesh over them, then lower and compile as usual."""
  _check_gpu(gpu)
  per_node = min(count, gpus_per_node)
  if count < 1 or count % per_node:
    raise ValueError(f"{count} GPUs do not make whole nodes of {gpus_per_node}")
  try:
    topology = topologies.get_topology_desc(platform="cuda", target_config=target_config(gpu),
                                            topology=f"1x{count // per_node}x{per_node}")
  except NotImplementedError as error:  # no CUDA plugin registered a topology factory
    raise GpuCompilerMissing(INSTALL_HINT) from error
  return tuple(topology.devices)


def compile_and_dump(lowered: jax.stages.Lowered, dump_dir: str | Path,
                     **xla_options: str) -> jax.stages.Compiled:
  """lowered.compile(), with XLA's dump (HLO, PTX, thunk sequence) written to `dump_dir`, and any
  other XLA debug options given. Compiled afresh: an executable from JAX's persistent
  compilation cache (which ignores dump options in its key) would come with no dump."""
  cache_was_on = jax.config.jax_enable_compilation_cache
  jax.config.update("jax_enable_compilation_cache", False)
  try:
    return lowered.compile({"xla_dump_to": str(dump_dir), **xla_options})
  finally:
    jax.config.update("jax_enable_compilation_cache", cache_was_on)


@dataclasses.dataclass(frozen=True)
class KernelResources:
  """What one GPU kernel of a compiled program uses, and how many of its blocks fit on one SM."""

  name: str
  grid: tuple[int, ...]
  threads: int  # per block
  shared_memory: int  # bytes per block
  registers: int  # per thread
  spill_stores: int  # bytes per thread
  spill_loads: int
  blocks_per_sm: int
  limited_by: str  # the resource that sets blocks_per_sm
  warnings: tuple[str, ...] = ()  # ptxas's, e.g. C7515: Hopper's wgmma serialized

  @property
  def spill_bytes(self) -> int:
    return self.spill_stores + self.spill_loads


@functools.cache
def _ptxas() -> str:
  spec = importlib.util.find_spec("nvidia.cuda_nvcc")
  for folder in (spec.submodule_search_locations or []) if spec else []:
    if (Path(folder) / "bin" / "ptxas").exists():
      return str(Path(folder) / "bin" / "ptxas")
  path = shutil.which("ptxas")
  if path is None:
    raise GpuCompilerMissing(INSTALL_HINT + "; ptxas was not found")
  return path


_LAUNCH = re.compile(r"\s(\S+) grid: \[([\d, ]+)\] threads: \[([\d, ]+)\]\s+shared_memory: (\d+)")
_ENTRY = re.compile(r"Compiling entry function '(\w+)'")
_SPILLS = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_REGISTERS = re.compile(r"Used (\d+) registers")


def _ptxas_report(ptx: Path) -> dict[str, tuple[int, int, int, tuple[str, ...]]]:
  """{entry: (registers, spill store bytes, spill load bytes, warnings)} from `ptxas -v` on one
  PTX file (XLA writes one kernel per file)."""
  target = re.search(r"^\.target (\w+)", ptx.read_text(), re.MULTILINE)
  if target is None:
    return {}  # XLA writes an empty PTX file for a module part with no kernels
  result = subprocess.run([_ptxas(), "-v", f"-arch={target.group(1)}", str(ptx), "-o", "/dev/null"],
                          capture_output=True, text=True, check=True)
  report, entry, spills = {}, None, (0, 0)
  warnings = tuple(line.strip() for line in result.stderr.splitlines() if "warning" in line)
  for line in result.stderr.splitlines():
    if match := _ENTRY.search(line):
      entry, spills = match.group(1), (0, 0)
    elif match := _SPILLS.search(line):
      spills = (int(match.group(1)), int(match.group(2)))
    elif (match := _REGISTERS.search(line)) and entry:
      report[entry] = (int(match.group(1)), *spills, warnings)
  return report


def blocks_per_sm(limits: GpuLimits, threads: int, registers: int,
                  shared_memory: int) -> tuple[int, str]:
  """Resident blocks per SM by CUDA's occupancy rules, and the resource that limits them.

  Registers are allocated per warp in units of 256; each block with shared memory also takes the
  runtime's reserved kilobyte.
  """
  warps = math.ceil(threads / 32)
  registers_per_warp = math.ceil(registers * 32 / 256) * 256
  bounds = {"blocks": limits.blocks_per_sm,
            "threads": limits.threads_per_sm // (warps * 32),
            "registers": limits.registers_per_sm // registers_per_warp // warps}
  if shared_memory:
    bounds["shared memory"] = limits.shared_memory_per_sm // (
        shared_memory + limits.reserved_shared_memory_per_block)
  limit = min(bounds, key=bounds.get)
  return bounds[limit], limit


def kernel_resources(dump_dir: str | Path, gpu: str) -> list[KernelResources]:
  """Every kernel launched by the programs dumped in `dump_dir` (by `compile_and_dump` for
  `gpu`), in launch order."""
  dump_dir, limits = Path(dump_dir), gpu_limits(gpu)
  registers = {}
  for ptx in sorted(dump_dir.glob("*.ptx")):
    registers.update(_ptxas_report(ptx))
  kernels = []
  for sequence in sorted(dump_dir.glob("*thunk_sequence.txt")):
    for match in _LAUNCH.finditer(sequence.read_text()):
      name = match.group(1)
      if name not in registers:
        continue  # a library call (cuBLAS, cuDNN): no PTX of ours
      threads = math.prod(int(n) for n in match.group(3).split(","))
      shared_memory = int(match.group(4))
      used, stores, loads, warnings = registers[name]
      fit, limit = blocks_per_sm(limits, threads, used, shared_memory)
      kernels.append(KernelResources(
          name=name, grid=tuple(int(n) for n in match.group(2).split(",")), threads=threads,
          shared_memory=shared_memory, registers=used, spill_stores=stores, spill_loads=loads,
          blocks_per_sm=fit, limited_by=limit, warnings=warnings))
  return kernels


def flash_attention_resources(gpu: str, head_dim: int, block_sizes=None, *,
                              shape: tuple[int, int, int] = (4, 2048, 16), dtype=jnp.bfloat16,
                              causal: bool = True) -> list[KernelResources]:
  """The forward, dq and dk/dv kernels of the Pallas flash attention compiled for `gpu` at
  (batch, seq, heads) = `shape` and `head_dim`, with `block_sizes` (default: that GPU's)."""
  device = gpu_devices(gpu)[0]
  blocks = block_sizes or default_block_sizes(head_dim, device)
  sharding = jax.sharding.SingleDeviceSharding(device)
  operand = jax.ShapeDtypeStruct((*shape, head_dim), dtype, sharding=sharding)

  def value_and_grads(q, k, v, do):
    attend = functools.partial(flash_attention, causal=causal, block_sizes=blocks)
    out, vjp = jax.vjp(attend, q, k, v)
    return out, vjp(do)

  with tempfile.TemporaryDirectory() as dump_dir:
    compile_and_dump(jax.jit(value_and_grads).lower(*[operand] * 4), dump_dir)
    return [kernel for kernel in kernel_resources(dump_dir, gpu)
            if kernel.name.startswith("flash_attention")]
