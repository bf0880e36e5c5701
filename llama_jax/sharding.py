"""One device mesh, logical axis names, and the rules that map one onto the other.

The mesh has three axes:
  data    pure data parallelism: parameters replicated, the batch split.
  fsdp    data parallelism with parameters, gradients and optimizer state split too (ZeRO-3,
          Rajbhandari et al. 2020): a layer's weights are all-gathered just before use.
  tensor  Megatron tensor parallelism (Shoeybi et al. 2019): q/k/v and w1/w3 split by output
          (heads, FFN units), o and w2 by input, embedding and output layer by vocabulary. With
          sequence parallelism (Korthikanti et al. 2022) the residual stream between the blocks,
          and the norms, are split along the sequence over the same devices, so each block starts
          with an all-gather and ends with a reduce-scatter instead of an all-reduce.

The model names the axes of its parameters (`out_sharding` metadata) and of its main activations
(`constrain`); `logical_rules` is the one table that places those names on the mesh. Nothing else
in the library mentions a mesh axis.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import spmd as flax_spmd
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical names of the activations the model constrains (parameters use the same vocabulary).
RESIDUAL = ("batch", "residual_length", "residual_embed")  # between blocks and in the norms
PER_HEAD = ("batch", "length", "heads", "kv")  # q, k, v and the attention output
HIDDEN = ("batch", "length", "mlp")  # SwiGLU's hidden units
LOGITS = ("batch", "length", "vocab")
TOKENS = ("batch", "length")
KV_CACHE = ("layers", "batch", "length", "heads", "kv")  # generation's keys and values


def logical_rules(sequence_parallel: bool) -> tuple[tuple[str, str | tuple[str, ...] | None], ...]:
  """The logical-to-mesh table: every logical name used by the model, and its mesh axes."""
  return (
      ("batch", BATCH_AXES),
      ("length", None),
      ("residual_length", "tensor" if sequence_parallel else None),
      ("residual_embed", None),
      ("embed", "fsdp"),  # parameters' model dimension: what ZeRO-3 splits
      ("heads", "tensor"),
      ("kv", None),
      ("mlp", "tensor"),
      ("vocab", "tensor"),
      ("layers", None),
  )


@dataclasses.dataclass(frozen=True)
class MeshRules:
  """A mesh and the logical rules in force on it."""

  mesh: Mesh
  rules: tuple

  def spec(self, logical_axes: Sequence[str | None]) -> PartitionSpec:
    table = dict(self.rules)
    unknown = [name for name in logical_axes if name is not None and name not in table]
    if unknown:
      raise KeyError(f"logical axes {unknown} have no sharding rule; rules cover {sorted(table)}")
    return PartitionSpec(*(table[name] if name else None for name in logical_axes))

  def sharding(self, logical_axes: Sequence[str | None]) -> NamedSharding:
    return NamedSharding(self.mesh, self.spec(logical_axes))


_ACTIVE: contextvars.ContextVar[MeshRules | None] = contextvars.ContextVar(
    "llama_jax_mesh_rules", default=None)


@contextlib.contextmanager
def activation_sharding(mesh_rules: MeshRules) -> Iterator[None]:
  """While tracing inside this context, `constrain` pins activations to the mesh."""
  token = _ACTIVE.set(mesh_rules)
  try:
    yield
  finally:
    _ACTIVE.reset(token)


def target_device() -> jax.Device:
  """The kind of device the code being traced is compiled for: the active mesh's (which may be
  GPUs compiled for from a CPU host, llama_jax.gpu_compile), else JAX's default device."""
  mesh_rules = _ACTIVE.get()
  return jax.devices()[0] if mesh_rules is None else mesh_rules.mesh.devices.flat[0]


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; the identity outside `activation_sharding`."""
  mesh_rules = _ACTIVE.get()
  if mesh_rules is None:
    return x
  return jax.lax.with_sharding_constraint(x, mesh_rules.sharding(logical_axes))


def shard_locally(fn: Callable, in_axes: Sequence[Sequence[str | None]],
                  out_axes: Sequence[str | None]) -> Callable:
  """`fn` run per device on its own shards (shard_map) under `activation_sharding`, else as is.

  For computations that are local along the sharded axes but that XLA cannot split by itself,
  such as a Pallas kernel (a custom call): attention is local to its batch rows and heads.
  """
  mesh_rules = _ACTIVE.get()
  if mesh_rules is None:
    return fn
  return jax.shard_map(fn, mesh=mesh_rules.mesh,
                       in_specs=tuple(mesh_rules.spec(axes) for axes in in_axes),
                       out_specs=mesh_rules.spec(out_axes), check_vma=False)


def vocab_parallel_lookup(table: jax.Array, tokens: jax.Array) -> jax.Array:
  """table[tokens] as RESIDUAL activations, for a table [vocab, dim] placed by the rules.

  Megatron's vocabulary-parallel embedding, written out under shard_map: each device looks up
  the tokens its slice of the vocabulary holds (zero rows for the others) and the partial rows are
  summed across the devices of the vocabulary's axis, reduce-scattered along the sequence when
  the residual stream is split there (sequence parallelism). Left to the partitioner, the GPU
  compiler gathered the whole table instead (tests/test_gpu_compile.py). A plain lookup outside
  `activation_sharding` or when the vocabulary is not split.
  """
  mesh_rules = _ACTIVE.get()
  table_spec = None if mesh_rules is None else mesh_rules.spec(("vocab", None))
  vocab_axis = None if table_spec is None else table_spec[0]
  if vocab_axis is None or mesh_rules.mesh.shape[vocab_axis] == 1:
    return jnp.take(table, tokens, axis=0)
  residual_spec = mesh_rules.spec(RESIDUAL)
  if residual_spec[1] not in (None, vocab_axis):
    raise ValueError(f"the residual sequence axis {residual_spec[1]!r} must be the vocabulary's "
                     f"axis {vocab_axis!r} or none")

  def local(table, tokens):
    rows = table.shape[0]
    index = tokens - jax.lax.axis_index(vocab_axis) * rows
    held = (index >= 0) & (index < rows)
    partial = jnp.where(held[..., None], jnp.take(table, jnp.clip(index, 0, rows - 1), axis=0), 0)
    if residual_spec[1] is None:
      return jax.lax.psum(partial, vocab_axis)
    return jax.lax.psum_scatter(partial, vocab_axis, scatter_dimension=1, tiled=True)

  return shard_locally(local, (("vocab", None), TOKENS), RESIDUAL)(table, tokens)


def mesh_shape(sizes: Mapping[str, int], num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) from the config's sizes, one of which may be -1 for "the rest"."""
  for axis in MESH_AXES:
    size = sizes[axis]
    if not isinstance(size, int) or isinstance(size, bool) or (size < 1 and size != -1):
      raise ValueError(f"mesh.{axis}={size!r}: use a positive integer, or -1 for the devices "
                       "the other axes leave")
  rest = [axis for axis in MESH_AXES if sizes[axis] == -1]
  if len(rest) > 1:
    raise ValueError(f"mesh.{' and mesh.'.join(rest)} are all -1; at most one axis can take "
                     "the rest of the devices")
  fixed = math.prod(sizes[axis] for axis in MESH_AXES if sizes[axis] != -1)
  described = " x ".join(f"{axis}={sizes[axis]}" for axis in MESH_AXES)
  if rest:
    if num_devices % fixed:
      raise ValueError(f"mesh {described}: the fixed axes need a multiple of {fixed} devices but "
                       f"there are {num_devices}; choose sizes whose product divides "
                       f"{num_devices}")
    return tuple(num_devices // fixed if sizes[axis] == -1 else sizes[axis]
                 for axis in MESH_AXES)
  if fixed != num_devices:
    raise ValueError(f"mesh {described} uses {fixed} devices but there are {num_devices}; "
                     "make the product equal the device count or set one axis to -1")
  return tuple(sizes[axis] for axis in MESH_AXES)


def parse_mesh(text: str) -> dict[str, int]:
  """Mesh sizes from a flag's "data=D,fsdp=F,tensor=T" (an axis left out is 1)."""
  sizes = {}
  for part in text.split(","):
    name, _, value = part.partition("=")
    if name not in MESH_AXES or not value.lstrip("-").isdigit():
      raise ValueError(f"--mesh={text!r}: write data=D,fsdp=F,tensor=T (each an integer, -1 for "
                       "the rest)")
    sizes[name] = int(value)
  return {"data": 1, "fsdp": 1, "tensor": 1, **sizes}


def make_mesh(mesh_config: Mapping, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The ('data', 'fsdp', 'tensor') mesh over `devices` (default: all of them).

  jax.make_mesh orders the devices so that the last axis, `tensor`, stays inside a host (NVLink)
  when it fits, and `data`, the axis with the least traffic, spans hosts.
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape({axis: mesh_config[axis] for axis in MESH_AXES}, len(devices))
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


def _divisors(n: int) -> str:
  return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def check_fits(model_config, mesh_sizes: Mapping[str, int], batch_size: int,
               sequence_parallel: bool) -> None:
  """Raises with what to change when the model or batch cannot be split over the mesh evenly."""
  tensor, fsdp = mesh_sizes["tensor"], mesh_sizes["fsdp"]
  batch_ways = mesh_sizes["data"] * fsdp
  problems = []
  for field, what in (("n_heads", "heads"), ("ffn_dim", "FFN units"), ("vocab_size", "vocabulary")):
    value = getattr(model_config, field)
    if value % tensor:
      problems.append(f"model.{field}={value} is not divisible by mesh.tensor={tensor} "
                      f"(tensor parallelism splits the {what}); use mesh.tensor in "
                      f"{{{_divisors(value)}}}")
  if model_config.dim % fsdp:
    problems.append(f"model.dim={model_config.dim} is not divisible by mesh.fsdp={fsdp} (FSDP "
                    f"splits each weight along the model dimension); use mesh.fsdp in "
                    f"{{{_divisors(model_config.dim)}}} or move devices to mesh.data")
  if batch_size % batch_ways:
    problems.append(f"the batch of {batch_size} sequences does not split over mesh.data x "
                    f"mesh.fsdp = {batch_ways} devices; use a batch size that is a multiple of "
                    f"{batch_ways}")
  if sequence_parallel and tensor > 1 and model_config.context_length % tensor:
    problems.append(f"model.context_length={model_config.context_length} is not divisible by "
                    f"mesh.tensor={tensor} (sequence parallelism splits the sequence); change "
                    "one, or set mesh.sequence_parallel=False")
  if problems:
    raise ValueError("the model does not fit the mesh:\n  " + "\n  ".join(problems))


def batch_ways(mesh: Mesh) -> int:
  """Devices the batch is split over (data x fsdp)."""
  return math.prod(mesh.shape[axis] for axis in BATCH_AXES)


def host_rows(rows, sharding: NamedSharding) -> jax.Array:
  """A global array from a host array that every process holds whole: each device takes its
  slice (works on any number of hosts)."""
  return jax.make_array_from_callback(rows.shape, sharding, lambda index: rows[index])


def with_shardings(shapes, shardings):
  """jax.ShapeDtypeStruct leaves carrying `shardings`: the target a checkpoint is restored into."""
  return jax.tree.map(lambda x, sharding: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                      shapes, shardings)


def param_shardings(abstract_state: nnx.State, mesh_rules: MeshRules) -> nnx.State:
  """NamedShardings for a model state, from each parameter's logical names and the rules."""
  with flax_spmd.logical_axis_rules(mesh_rules.rules):
    specs = nnx.get_partition_spec(abstract_state)
  return jax.tree.map(lambda spec: NamedSharding(mesh_rules.mesh, spec), specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))
