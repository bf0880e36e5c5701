"""Training-step throughput, measured here or estimated for a GPU from its compiled program:
python -m benchmarks.train_throughput --config=configs/1b.py [--batch_size=N] [--steps=N]
    [--remat=none,full,save_linear] [--attention=pallas,cudnn,xla] [--devices=N]
    [--profile=h100|a100] [--no-measure] [--config.KEY=VALUE ...]

Measurement (on whatever backend JAX has; by default unless --profile is given, --measure forces
it): for each remat policy x attention implementation, the sharded train step
(llama_jax.train_step.ShardedTraining, the config's mesh over the first --devices local devices) on
random tokens: compile, one warm-up step, then --steps timed steps. One JSON object per
combination: compile seconds (lowering and compiling), the median step, tokens/s per device, MFU
(metrics.flops_per_token over the device's dense bfloat16 peak; null where the peak is unknown, as
on a CPU) and the peak memory: the device's own counter where it has one (memory_source
"memory_stats"; it cannot be reset, so a step that stays under an earlier row's peak reports the
other figure), else the compiled step's buffer assignment, arguments + outputs + temporaries -
donated aliases ("memory_analysis", always given as "compiled_memory_bytes"). What the backend
cannot run gives a row with "skipped" and the reason: cudnn off an NVIDIA GPU, pallas off a GPU
(it would run in Pallas interpret mode, far too slow to time), an out-of-memory error.
--config.KEY=VALUE overrides a config value (a Python literal, else a string).

--profile=GPU: a static roofline estimate, not a measurement. The step is compiled for one GPU of
that kind without the GPU (llama_jax.gpu_compile; the config's dtype, the first --attention, remat
save_linear when --remat lists it, else the first), and its optimized HLO is read: every kernel at
the top level of the scanned layer's forward and backward while-loop bodies gets one JSON row
(its per-layer FLOPs and bytes, and max(FLOPs / peak, bytes / bandwidth)), then a summary of the
whole step with the loops counted n_layers times and the kernels outside them once:
  FLOPs   a dot or convolution in a fusion: 2 x result elements x contracted size. The Pallas
          flash kernels (causal, masked blocks skipped): forward F = 4 b h s^2 d / 2, dq 1.5 F and
          dkv 2 F, counting the matmuls per tile in llama_jax/kernels/flash_attention.py (forward
          q k^T, p v; dq adds do v^T and ds k to q k^T; dkv adds ds^T q and p^T do to those two):
          3.5 F for the backward, not the 2.5 F minimum of a backward that shares its recomputed
          tiles. cuDNN attention: F forward, 2.5 F backward. A fusion without a dot: one FLOP per
          output element (elementwise). Collectives and copies: none.
  bytes   sizes of the operands and results of each kernel; an operand read only through slices
          counts the slices, and an in-place dynamic-update-slice counts its update, not the
          stacked buffer (the layer's slice of the saved activations and of the gradients).
The bound is each kernel alone at full speed, summed over kernels (no overlap, no launch gaps):
a lower bound on the step time, hence upper bounds on tokens/s and MFU. "hlo_to_model_flops" is
the HLO's matmul FLOPs over metrics.flops_per_token x tokens: recomputation and the causal
attention formula put it a little above 1.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import re
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from llama_jax import gpu_compile
from llama_jax.config import load_config_file, total_steps
from llama_jax.metrics import flops_per_token, peak_flops_per_second
from llama_jax.model import REMAT_POLICIES, ModelConfig
from llama_jax.optim import make_optimizer
from llama_jax.sharding import MeshRules, batch_ways, check_fits, logical_rules, make_mesh
from llama_jax.train_step import ShardedTraining

ATTENTION = ("pallas", "cudnn", "xla")
DEFAULT_MAX_BATCH = 8

# --- set-up ----------------------------------------------------------------------------------


def _override(config, key: str, text: str) -> None:
  """config.KEY = VALUE, the value read as a Python literal where it is one (else a string)."""
  *path, leaf = key.split(".")
  node = config
  for part in path:
    node = node[part]
  if leaf not in node:
    raise KeyError(f"--config.{key}: the config has no such key")
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  node[leaf] = value


def _default_batch(config) -> int:
  return min(config.train.micro_batch_size or config.train.batch_size, DEFAULT_MAX_BATCH)


def _training(config, model_config: ModelConfig, devices, mesh_sizes=None) -> ShardedTraining:
  mesh = make_mesh(mesh_sizes or config.mesh, devices)
  rules = logical_rules(config.mesh.sequence_parallel)
  return ShardedTraining(model_config, make_optimizer(config.optim, total_steps(config)),
                         MeshRules(mesh, rules))


def _skipped_reason(error: Exception) -> str:
  text = str(error).strip().splitlines()[0] if str(error).strip() else ""
  if "RESOURCE_EXHAUSTED" in str(error) or "out of memory" in str(error).lower():
    return f"out of memory: {text}"
  return f"{type(error).__name__}: {text}"


# --- measurement -----------------------------------------------------------------------------


def _peak_bytes(devices) -> int | None:
  """The largest peak_bytes_in_use of `devices` since the process started; None without it."""
  stats = [device.memory_stats() for device in devices]
  if all(s and "peak_bytes_in_use" in s for s in stats):
    return max(s["peak_bytes_in_use"] for s in stats)
  return None


def _time_step(training: ShardedTraining, batch: dict, steps: int, devices) -> dict:
  peak_before = _peak_bytes(devices)
  state = training.init(jnp.int32(0))
  start = time.perf_counter()
  compiled = training.step.lower(state, batch).compile()
  compile_seconds = time.perf_counter() - start
  state, metrics = compiled(state, batch)  # warm-up: first-run allocations and transfers
  jax.block_until_ready((state, metrics))
  seconds = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    seconds.append(time.perf_counter() - start)
  memory = compiled.memory_analysis()
  compiled_bytes = (memory.argument_size_in_bytes + memory.output_size_in_bytes
                    + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
  # The device's peak cannot be reset: it is this step's only if this step raised it.
  peak = _peak_bytes(devices)
  measured = peak is not None and (peak_before is None or peak > peak_before)
  return {"compile_seconds": compile_seconds, "step_seconds": statistics.median(seconds),
          "loss": float(metrics["loss"]), "compiled_memory_bytes": compiled_bytes,
          "peak_memory_bytes": peak if measured else compiled_bytes,
          "memory_source": "memory_stats" if measured else "memory_analysis"}


def measure(config, config_name: str, remat: str, attention: str, batch_size: int, steps: int,
            devices) -> dict:
  """One row: the step of `config` with `remat` and `attention` on `devices`."""
  model_config = dataclasses.replace(ModelConfig.from_dict(config.model), remat=remat,
                                     attention=attention)
  seq = model_config.context_length
  device = devices[0]
  row = {"benchmark": "train_throughput", "config": config_name, "remat": remat,
         "attention": attention, "batch_size": batch_size, "seq": seq, "devices": len(devices),
         "backend": device.platform, "device": device.device_kind, "dtype": model_config.dtype}
  if attention == "pallas" and device.platform != "gpu":
    row["skipped"] = ("pallas runs in Pallas interpret mode off a GPU: far too slow to time, and "
                      "not the kernel's speed")
    return row
  try:
    training = _training(config, model_config, devices)
    tokens = np.random.default_rng(0).integers(0, model_config.vocab_size, (batch_size, seq + 1),
                                               dtype=np.int32)
    batch = {name: jax.device_put(rows, training.batch_sharding)
             for name, rows in (("inputs", tokens[:, :-1]), ("targets", tokens[:, 1:]))}
    timed = _time_step(training, batch, steps, devices)
  except (ValueError, NotImplementedError, RuntimeError) as error:
    # cudnn off an NVIDIA GPU (ValueError) or without cuDNN, a kernel the compiler rejects, out
    # of memory (JaxRuntimeError, a RuntimeError).
    row["skipped"] = _skipped_reason(error)
    return row
  tokens_per_second = batch_size * seq / timed["step_seconds"] / len(devices)
  peak = peak_flops_per_second(device)
  row.update({
      "compile_seconds": round(timed["compile_seconds"], 3),
      "step_seconds": float(f"{timed['step_seconds']:.4g}"),
      "tokens_per_second_per_device": float(f"{tokens_per_second:.4g}"),
      "mfu": None if peak is None else round(
          flops_per_token(model_config) * tokens_per_second / peak, 4),
      "peak_memory_bytes": timed["peak_memory_bytes"], "memory_source": timed["memory_source"],
      "compiled_memory_bytes": timed["compiled_memory_bytes"], "loss": round(timed["loss"], 4)})
  return row


# --- the compiled program's HLO ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Instruction:
  name: str
  shape: str  # "bf16[2,256,128]{2,1,0}", or a tuple "(s32[], f32[4]{0})"
  opcode: str
  operands: tuple[str, ...]  # names of the instructions it reads
  inner: str  # the text between its parentheses: operands, or a parameter's number
  attributes: str  # what follows: calls=, metadata=, backend_config=, ...


_HEADER = re.compile(r"^(?:ENTRY\s+)?%([\w.\-]+)\s")
_LINE = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*)$")
_ARRAY = re.compile(r"\b([a-z][a-z0-9]*)\[([\d,]*)\]")


def _closing(text: str, start: int) -> int:
  """Index just past the parenthesis that closes the one at text[start]."""
  depth = 0
  for i in range(start, len(text)):
    depth += {"(": 1, ")": -1}.get(text[i], 0)
    if depth == 0:
      return i + 1
  raise ValueError(f"unbalanced parentheses in {text[:80]!r}")


def _instruction(name: str, rest: str) -> Instruction | None:
  if rest.startswith("("):
    end = _closing(rest, 0)
    shape, rest = rest[:end], rest[end:].lstrip()
  else:
    shape, _, rest = rest.partition(" ")
  match = re.match(r"([\w\-]+)\(", rest)
  if match is None:
    return None
  end = _closing(rest, match.end() - 1)
  inner = rest[match.end():end - 1]
  return Instruction(name, shape, match.group(1), tuple(re.findall(r"%([\w.\-]+)", inner)),
                     inner, rest[end:])


def parse_hlo(text: str) -> tuple[dict[str, list[Instruction]], str]:
  """{computation: its instructions in order}, and the entry computation's name."""
  computations, entry, current = {}, None, None
  for line in text.splitlines():
    if current is None:
      header = _HEADER.match(line)
      if header and line.rstrip().endswith("{"):
        current = computations.setdefault(header.group(1), [])
        if line.startswith("ENTRY"):
          entry = header.group(1)
    elif line.strip() == "}":
      current = None
    elif (match := _LINE.match(line)) and (instruction := _instruction(*match.groups())):
      current.append(instruction)
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  return computations, entry


def _element_bytes(dtype: str) -> float:
  if dtype == "pred":
    return 1
  bits = re.match(r"(?:bf|[fsuc])(\d+)", dtype)
  return int(bits.group(1)) / 8 if bits else 0  # token[] and the like hold no data


def arrays(shape: str) -> list[tuple[str, tuple[int, ...]]]:
  """(dtype, dims) of every array in a shape string, tuples flattened."""
  return [(dtype, tuple(int(d) for d in dims.split(",") if d))
          for dtype, dims in _ARRAY.findall(shape)]


def shape_bytes(shape: str) -> int:
  return int(sum(math.prod(dims) * _element_bytes(dtype) for dtype, dims in arrays(shape)))


def shape_elements(shape: str) -> int:
  return sum(math.prod(dims) for _, dims in arrays(shape))


def _called(instruction: Instruction, name: str) -> str | None:
  match = re.search(rf"\b{name}=%([\w.\-]+)", instruction.attributes)
  return match.group(1) if match else None


def _op_name(instruction: Instruction) -> str:
  match = re.search(r'op_name="([^"]*)"', instruction.attributes)
  return match.group(1) if match else ""


def _dims(instruction: Instruction, name: str) -> list[int]:
  match = re.search(rf"\b{name}={{([\d,]*)}}", instruction.attributes)
  return [int(d) for d in match.group(1).split(",") if d] if match else []


def _dot_flops(instruction: Instruction, shapes: dict[str, str]) -> int:
  """2 x result elements x contracted size."""
  if instruction.opcode == "dot":
    lhs = arrays(shapes[instruction.operands[0]])[0][1]
    contracted = math.prod(lhs[d] for d in _dims(instruction, "lhs_contracting_dims"))
  else:  # convolution: the filter's elements per output feature (its last dimension, as JAX's)
    rhs = arrays(shapes[instruction.operands[1]])[0][1]
    contracted = math.prod(rhs) // max(1, rhs[-1])
  return 2 * shape_elements(instruction.shape) * contracted


def _fused_dot_flops(computations: dict, name: str) -> int:
  """FLOPs of the dots and convolutions in a fused computation and the ones it calls."""
  instructions = computations.get(name, [])
  shapes = {i.name: i.shape for i in instructions}
  flops = 0
  for instruction in instructions:
    if instruction.opcode in ("dot", "convolution"):
      flops += _dot_flops(instruction, shapes)
    elif called := _called(instruction, "calls"):
      flops += _fused_dot_flops(computations, called)
  return flops


def _fusion_traffic(computations: dict, fusion: Instruction,
                    shapes: dict[str, str]) -> tuple[int, int]:
  """Bytes read and written by a fusion, and the elements it writes. An operand read only through
  slices counts the slices; a buffer updated in place (a dynamic-update-slice at the root) counts
  its update, read and written, not the whole buffer."""
  fused = computations.get(_called(fusion, "calls"), [])
  if not fused:
    return (sum(shape_bytes(shapes[o]) for o in fusion.operands if o in shapes)
            + shape_bytes(fusion.shape), shape_elements(fusion.shape))
  by_name = {i.name: i for i in fused}
  readers: dict[str, list[Instruction]] = {}
  for i in fused:
    for operand in i.operands:
      readers.setdefault(operand, []).append(i)
  root = fused[-1]
  roots = [by_name[o] for o in root.operands] if root.opcode == "tuple" else [root]
  in_place = {r.operands[0] for r in roots if r.opcode == "dynamic-update-slice"
              and by_name[r.operands[0]].opcode == "parameter"}
  read = 0
  for parameter in (i for i in fused if i.opcode == "parameter"):
    if parameter.name in in_place:
      continue  # only the update moves: counted with the results
    whole = shape_bytes(shapes.get(fusion.operands[int(parameter.inner)], parameter.shape))
    users = readers.get(parameter.name, [])
    if users and all(u.opcode in ("dynamic-slice", "slice") and u.operands[0] == parameter.name
                     for u in users):
      whole = min(whole, sum(shape_bytes(u.shape) for u in users))
    read += whole
  written = [by_name[r.operands[1]].shape if r.opcode == "dynamic-update-slice"
             and r.operands[0] in in_place else r.shape for r in roots]
  return (read + sum(shape_bytes(w) for w in written),
          sum(shape_elements(w) for w in written))


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One kernel launch of the compiled step, `count` times per step."""

  name: str  # the Pallas kernel's name, else the HLO instruction's
  hlo: str  # the HLO instruction
  op: str  # the JAX operation it came from (op_name metadata, shortened)
  kind: str  # matmul | attention | elementwise | copy | collective | other
  flops: int
  bytes: int
  pass_: str  # forward | backward (the layer loops), outside (the rest of the step)
  count: int
  recompute: bool  # in the backward pass, recomputing what the remat policy did not save

  def seconds(self, peak_flops: float, bandwidth: float) -> float:
    return max(self.flops / peak_flops, self.bytes / bandwidth)


# Instructions that launch nothing: views, tuples, constants, control.
_FREE = {"parameter", "get-tuple-element", "tuple", "bitcast", "constant", "after-all",
         "partition-id", "replica-id", "add-dependency", "opt-barrier", "domain"}
_COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "collective-permute", "all-to-all",
                "send", "recv")
# Matmuls per tile of each Pallas kernel, in units of the forward's two (module docstring).
_FLASH = {"flash_attention_forward": 1.0, "flash_attention_dq": 1.5, "flash_attention_dkv": 2.0}


def _attention_flops(kernel: str, q_shape: tuple[int, ...], backward: bool) -> float:
  """Causal attention FLOPs of q [batch, seq, heads, head_dim]: 4 b h s^2 d / 2 forward."""
  forward = 2 * math.prod(q_shape) * q_shape[1]
  return forward * (_FLASH[kernel] if kernel in _FLASH else 2.5 if backward else 1.0)


def _kernel(computations: dict, instruction: Instruction, shapes: dict[str, str], count: int,
            pass_: str) -> Kernel:
  op_name = _op_name(instruction)
  op = re.sub(r"^.*/while/body/", "", op_name).replace("closed_call/", "")
  name, kind, flops = instruction.name, "other", 0
  operand_bytes = sum(shape_bytes(shapes[o]) for o in instruction.operands if o in shapes)
  size = operand_bytes + shape_bytes(instruction.shape)
  if instruction.opcode == "fusion":
    size, written = _fusion_traffic(computations, instruction, shapes)
    flops = _fused_dot_flops(computations, _called(instruction, "calls"))
    kind = "matmul" if flops else "elementwise"
    flops = flops or written
  elif instruction.opcode == "custom-call":
    target = re.search(r'custom_call_target="([^"]*)"', instruction.attributes).group(1)
    pallas = re.search(r'\bname = "([^"]*)"', instruction.attributes)
    q_shape = arrays(shapes.get(instruction.operands[0], ""))[:1] if instruction.operands else []
    if pallas and pallas.group(1) in _FLASH and q_shape:
      name, kind = pallas.group(1), "attention"
      flops = _attention_flops(name, q_shape[0][1], False)
    elif "fmha" in target.lower() and q_shape:  # cuDNN's fused attention
      name, kind = target, "attention"
      flops = _attention_flops(target, q_shape[0][1], "backward" in target.lower())
    elif "gemm" in target or "matmul" in target:  # a library GEMM (cuBLAS)
      lhs = arrays(shapes[instruction.operands[0]])[0][1]
      contracting = re.search(r'"lhs_contracting_dimensions":\[([^\]]*)\]', instruction.attributes)
      dims = [int(d) for d in re.findall(r"\d+", contracting.group(1))] if contracting else []
      result = arrays(instruction.shape)[0][1]  # a tuple's first array: its second is workspace
      kind, flops = "matmul", 2 * math.prod(result) * math.prod(lhs[d] for d in dims)
    elif pallas:
      name = pallas.group(1)
  elif instruction.opcode.startswith(_COLLECTIVES):
    kind = "collective"
  elif instruction.opcode in ("copy", "copy-start"):
    kind = "copy"
  return Kernel(name=name, hlo=instruction.name, op=op, kind=kind, flops=int(flops),
                bytes=int(size), pass_=pass_, count=count,
                recompute="rematted_computation" in op_name)


def step_kernels(hlo_text: str) -> list[Kernel]:
  """Every kernel of a compiled (GPU) program, in program order; a while loop's body counts its
  known trip count times, and is the forward pass unless it is a transposed (backward) one."""
  computations, entry = parse_hlo(hlo_text)
  kernels: list[Kernel] = []

  def walk(name: str, count: int, pass_: str) -> None:
    instructions = computations[name]
    shapes = {i.name: i.shape for i in instructions}
    for instruction in instructions:
      if instruction.opcode in _FREE or instruction.opcode.endswith("-done"):
        continue
      if instruction.opcode == "while":
        trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', instruction.attributes)
        loop_pass = "backward" if "transpose(" in _op_name(instruction) else "forward"
        walk(_called(instruction, "body"), count * (int(trips.group(1)) if trips else 1),
             loop_pass)
      elif instruction.opcode == "call":
        walk(_called(instruction, "to_apply"), count, pass_)
      else:
        kernels.append(_kernel(computations, instruction, shapes, count, pass_))

  walk(entry, 1, "outside")
  return kernels


# --- the static profile ------------------------------------------------------------------------


def _figure(x: float) -> float:
  return float(f"{x:.4g}")


def _totals(kernels: list[Kernel], peak: float, bandwidth: float, per_launch: bool) -> dict:
  """FLOPs, bytes and bound of `kernels`: one launch each, or as often as the step runs them."""
  times = [1 if per_launch else k.count for k in kernels]
  return {"kernels": len(kernels),
          "flops": sum(k.flops * n for k, n in zip(kernels, times, strict=True)),
          "bytes": sum(k.bytes * n for k, n in zip(kernels, times, strict=True)),
          "time_bound_us": _figure(sum(k.seconds(peak, bandwidth) * n
                                       for k, n in zip(kernels, times, strict=True)) * 1e6)}


def profile(config, config_name: str, gpu: str, remat: str, attention: str, batch_size: int,
            dump_dir: str | None = None) -> list[dict]:
  """Kernel rows of one layer's forward and backward loops, then the step's summary."""
  device = gpu_compile.gpu_devices(gpu)[0]
  model_config = dataclasses.replace(ModelConfig.from_dict(config.model), remat=remat,
                                     attention=attention)
  training = _training(config, model_config, [device], {"data": 1, "fsdp": 1, "tensor": 1})
  state = jax.eval_shape(training.init, jnp.int32(0))
  tokens = jax.ShapeDtypeStruct((batch_size, model_config.context_length), jnp.int32)
  lowered = training.step.lower(state, {"inputs": tokens, "targets": tokens})
  with tempfile.TemporaryDirectory() as scratch:
    compiled = gpu_compile.compile_and_dump(lowered, dump_dir or scratch)
  kernels = step_kernels(compiled.as_text())
  peak = peak_flops_per_second(device)
  bandwidth = gpu_compile.gpu_limits(gpu).memory_bandwidth
  rows = []
  for k in kernels:
    if k.pass_ == "outside":
      continue
    compute, memory = k.flops / peak, k.bytes / bandwidth
    rows.append({"benchmark": "train_step_profile", "gpu": gpu, "kernel": k.name, "hlo": k.hlo,
                 "op": k.op, "kind": k.kind, "pass": k.pass_, "recompute": k.recompute,
                 "flops": k.flops, "bytes": k.bytes,
                 "time_bound_us": _figure(max(compute, memory) * 1e6),
                 "bound": "compute" if compute >= memory else "memory",
                 "launches_per_step": k.count})
  outside = [k for k in kernels if k.pass_ == "outside"]
  largest = sorted(outside, key=lambda k: -k.seconds(peak, bandwidth))[:10]
  by_kind: dict[str, dict[str, float]] = {}
  for k in kernels:  # where the bound's time goes, in milliseconds per step
    kinds = by_kind.setdefault(k.pass_, {})
    kinds[k.kind] = kinds.get(k.kind, 0.0) + k.seconds(peak, bandwidth) * k.count * 1e3
  seconds = sum(k.seconds(peak, bandwidth) * k.count for k in kernels)
  flops = sum(k.flops * k.count for k in kernels)
  matmul = sum(k.flops * k.count for k in kernels if k.kind in ("matmul", "attention"))
  size = sum(k.bytes * k.count for k in kernels)
  step_tokens = batch_size * model_config.context_length
  model_flops = flops_per_token(model_config) * step_tokens
  memory = compiled.memory_analysis()
  rows.append({
      "benchmark": "train_step_profile", "summary": True, "estimate": True, "gpu": gpu,
      "device": device.device_kind, "config": config_name, "remat": remat,
      "attention": attention, "dtype": model_config.dtype, "batch_size": batch_size,
      "seq": model_config.context_length, "n_layers": model_config.n_layers,
      "peak_flops_per_second": peak, "peak_dtype": "bfloat16", "memory_bandwidth": bandwidth,
      "per_layer": {p: _totals([k for k in kernels if k.pass_ == p], peak, bandwidth, True)
                    for p in ("forward", "backward")},
      "outside_loops": {**_totals(outside, peak, bandwidth, False), "largest": [
          {"kernel": k.name, "op": k.op, "kind": k.kind, "flops": k.flops, "bytes": k.bytes,
           "time_bound_us": _figure(k.seconds(peak, bandwidth) * 1e6)} for k in largest]},
      "flops": flops, "matmul_flops": matmul, "elementwise_flops": flops - matmul, "bytes": size,
      "time_bound_ms_by_pass_and_kind": {
          p: {kind: _figure(ms) for kind, ms in kinds.items()} for p, kinds in by_kind.items()},
      "recompute_time_bound_ms": _figure(sum(
          k.seconds(peak, bandwidth) * k.count for k in kernels if k.recompute) * 1e3),
      "step_seconds_bound": _figure(seconds),
      "aggregate_seconds_bound": _figure(max(flops / peak, size / bandwidth)),
      "tokens_per_step": step_tokens,
      "tokens_per_second_bound": _figure(step_tokens / seconds),
      "mfu_bound": round(model_flops / seconds / peak, 4),
      "model_flops_per_step": model_flops, "hlo_to_model_flops": round(matmul / model_flops, 4),
      "compiled_memory_bytes": (memory.argument_size_in_bytes + memory.output_size_in_bytes
                                + memory.temp_size_in_bytes - memory.alias_size_in_bytes),
      "note": "an estimate from the compiled program, not a measurement; no GPU was used"})
  return rows


# --- command line ------------------------------------------------------------------------------


def _choices(parser: argparse.ArgumentParser, flag: str, text: str,
             allowed: tuple[str, ...]) -> list[str]:
  chosen = [c for c in text.split(",") if c]
  unknown = [c for c in chosen if c not in allowed]
  if unknown or not chosen:
    parser.error(f"--{flag}={text}: choose from {','.join(allowed)}")
  return chosen


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="config file, e.g. configs/1b.py")
  parser.add_argument("--batch_size", type=int, default=None,
                      help=f"sequences per step (default: the config's micro-batch or batch, at "
                      f"most {DEFAULT_MAX_BATCH}, rounded up to a multiple of the batch's devices)")
  parser.add_argument("--steps", type=int, default=10, help="timed steps per combination")
  parser.add_argument("--remat", default=",".join(REMAT_POLICIES))
  parser.add_argument("--attention", default=",".join(ATTENTION),
                      help="implementations to time; --profile compiles the first")
  parser.add_argument("--devices", type=int, default=None,
                      help="time on the first N local devices (default: all)")
  parser.add_argument("--profile", choices=sorted(gpu_compile.GPUS), default=None,
                      help="static roofline profile of the step compiled for this GPU")
  parser.add_argument("--measure", action=argparse.BooleanOptionalAction, default=None,
                      help="time the step on this machine (default: unless --profile is given)")
  parser.add_argument("--dump_dir", default=None, help="keep --profile's XLA dump here")
  args, overrides = parser.parse_known_args(argv)
  config = load_config_file(args.config)
  for arg in overrides:
    key, has_value, value = arg.removeprefix("--config.").partition("=")
    if not arg.startswith("--config.") or not has_value:
      parser.error(f"unrecognized argument {arg} (config overrides are --config.KEY=VALUE)")
    try:
      _override(config, key, value)
    except (KeyError, TypeError, AttributeError) as error:
      parser.error(f"{arg}: {error}")
  remats = _choices(parser, "remat", args.remat, REMAT_POLICIES)
  attentions = _choices(parser, "attention", args.attention, ATTENTION)
  try:
    model_config = ModelConfig.from_dict(config.model)
  except ValueError as error:
    parser.error(str(error))
  if args.measure if args.measure is not None else args.profile is None:
    devices = jax.local_devices()[:args.devices] if args.devices else jax.local_devices()
    try:
      mesh = make_mesh(config.mesh, devices)
      ways = batch_ways(mesh)
      batch_size = args.batch_size or ways * math.ceil(_default_batch(config) / ways)
      check_fits(model_config, dict(mesh.shape), batch_size, config.mesh.sequence_parallel)
    except ValueError as error:
      parser.error(str(error))
    for remat in remats:
      for attention in attentions:
        print(json.dumps(measure(config, args.config, remat, attention, batch_size, args.steps,
                                 devices)), flush=True)
  if args.profile:
    remat = "save_linear" if "save_linear" in remats else remats[0]
    batch_size = args.batch_size or _default_batch(config)
    try:
      rows = profile(config, args.config, args.profile, remat, attentions[0], batch_size,
                     args.dump_dir)
    except (ValueError, RuntimeError) as error:  # GpuCompilerMissing, cuDNN not found, ...
      rows = [{"benchmark": "train_step_profile", "gpu": args.profile, "attention": attentions[0],
               "skipped": _skipped_reason(error)}]
    for row in rows:
      print(json.dumps(row), flush=True)


if __name__ == "__main__":
  main()
