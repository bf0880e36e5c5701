"""Flash attention in Pallas: causal forward and backward with the masked blocks skipped.

The paper trains with xformers' memory-efficient attention (Touvron et al. 2023, section 2.4):
attention weights are never stored, and key/query blocks that the causal mask removes are never
computed. This is that algorithm (FlashAttention, Dao et al. 2022; FlashAttention-2's loop order,
Dao 2023) as three Pallas kernels written for the Triton backend (A100, H100):

  forward  one program per (query block, batch, head): online softmax over the key blocks; saves
           only the output and the log-sum-exp of each row.
  dq       one program per (query block, batch, head): loops over key blocks.
  dk, dv   one program per (key block, batch, head): loops over query blocks.

Causal skipping is done by loop bounds: blocks entirely above the diagonal are never loaded; the
blocks that straddle it run a masked variant of the loop body, the blocks below it an unmasked one.
Where the program is lowered for another platform (the CPU tests) the same kernels run in Pallas
interpret mode: the choice is made per lowering platform (jax.lax.platform_dependent), so a CPU host
compiling for a GPU gets the Triton kernels.

Sequences that are not a multiple of the block size are zero-padded to one; padded keys are hidden
by the causal mask or, without it, by segment ids. `flash_attention` expects the shapes that
llama_jax.attention.dot_product_attention checks; it checks what the kernels add (dtype, head_dim,
block sizes).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.ad_checkpoint import checkpoint_name
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

DTYPES = (jnp.bfloat16, jnp.float32)
# checkpoint_name of the forward kernel's output and row log-sum-exps: the backward's residuals.
RESIDUAL_NAMES = ("flash_attention_out", "flash_attention_lse")
# Triton tiles are powers of two and its matmuls need at least 16 along each dimension.
HEAD_DIMS = (16, 32, 64, 128)
MIN_BLOCK = 16
# Finite, so a tile whose keys are all masked gives exp(0) instead of exp(-inf - -inf) = NaN.
_MASK_VALUE = float(jnp.finfo(jnp.float32).min) / 2


@dataclasses.dataclass(frozen=True)
class Tiling:
  """One kernel's tile (rows of queries and of keys per block) and its Triton launch settings."""

  block_q: int
  block_k: int
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    for name in ("block_q", "block_k"):
      value = getattr(self, name)
      if not (isinstance(value, int) and value >= MIN_BLOCK and value & (value - 1) == 0):
        raise ValueError(f"{name}={value!r}: block sizes must be powers of two >= {MIN_BLOCK} "
                         "(Triton tiles)")


@dataclasses.dataclass(frozen=True)
class BlockSizes:
  """Tilings of the three kernels."""

  forward: Tiling
  dq: Tiling
  dkv: Tiling

  def clamped(self, length: int) -> BlockSizes:
    """No block longer than the sequence (rounded up to a power of two, at least MIN_BLOCK)."""
    cap = max(MIN_BLOCK, pl.next_power_of_2(length))
    fit = lambda t: dataclasses.replace(t, block_q=min(t.block_q, cap),  # noqa: E731
                                        block_k=min(t.block_k, cap))
    return BlockSizes(fit(self.forward), fit(self.dq), fit(self.dkv))

  @property
  def largest(self) -> int:
    """Every block divides a multiple of this (they are all powers of two)."""
    return max(max(t.block_q, t.block_k) for t in (self.forward, self.dq, self.dkv))


# Chosen by `python -m benchmarks.kernel_resources --sweep`, which compiles each kernel's candidate
# tilings for H100 (sm_90a) and A100 (sm_80) without a GPU and keeps, by a stated rule, one that
# does not spill with the most resident warps per SM (docs/results/attention.md). Not yet timed on
# a GPU. Tiling(block_q, block_k, num_warps, num_stages).
_DEFAULT_BLOCK_SIZES = {
    ("ampere", 64): BlockSizes(Tiling(64, 64, 4, 2), Tiling(128, 32, 8, 2), Tiling(128, 64, 8, 2)),
    ("ampere", 128): BlockSizes(Tiling(128, 64, 8, 2), Tiling(64, 128, 8, 2),
                                Tiling(64, 64, 8, 2)),
    ("hopper", 64): BlockSizes(Tiling(128, 64, 8, 2), Tiling(64, 32, 4, 2), Tiling(32, 64, 8, 2)),
    ("hopper", 128): BlockSizes(Tiling(128, 128, 8, 2), Tiling(128, 32, 8, 2),
                                Tiling(64, 64, 8, 2)),
}


def default_block_sizes(head_dim: int, device: jax.Device | None = None) -> BlockSizes:
  """The defaults for this GPU generation (Hopper for compute capability 9 and up, else Ampere's)
  and head_dim (64 or less, or 128)."""
  device = device or jax.devices()[0]
  capability = getattr(device, "compute_capability", None)  # "9.0" on NVIDIA GPUs
  generation = "hopper" if capability and int(capability.split(".")[0]) >= 9 else "ampere"
  return _DEFAULT_BLOCK_SIZES[generation, 64 if head_dim <= 64 else 128]


def unsupported(q: jax.Array, k: jax.Array, v: jax.Array) -> str | None:
  """Why the kernels cannot take these inputs, or None when they can."""
  if not q.dtype == k.dtype == v.dtype or q.dtype not in DTYPES:
    return (f"pallas attention takes q, k, v all bfloat16 or all float32; got {q.dtype}, "
            f"{k.dtype}, {v.dtype}")
  if q.shape[-1] not in HEAD_DIMS:
    return (f"pallas attention supports head_dim in {HEAD_DIMS}; got {q.shape[-1]} (use "
            "implementation='xla')")
  return None


def flash_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                    segment_ids: jax.Array | None = None, *, causal: bool = True,
                    block_sizes: BlockSizes | None = None,
                    interpret: bool | None = None) -> jax.Array:
  """softmax(q k^T / sqrt(head_dim)) v for q, k, v [batch, seq, heads, head_dim].

  segment_ids [batch, seq] (integers, queries and keys alike) keep packed documents apart: a query
  sees only keys of its own segment. block_sizes defaults to `default_block_sizes` of JAX's
  default device; interpret defaults to True where the program is lowered for anything but a GPU.
  """
  head_dim = q.shape[-1]
  if reason := unsupported(q, k, v):
    raise ValueError(reason)
  q_len, kv_len = q.shape[1], k.shape[1]
  blocks = (block_sizes or default_block_sizes(head_dim)).clamped(max(q_len, kv_len))
  q_pad, kv_pad = -q_len % blocks.largest, -kv_len % blocks.largest

  # Padded keys come after every real query, so a causal mask hides them; without one, segment
  # ids do.
  q_segments = kv_segments = segment_ids
  if segment_ids is None and kv_pad and not causal:
    q_segments = jnp.zeros(q.shape[:2], jnp.int32)
    kv_segments = jnp.zeros(k.shape[:2], jnp.int32)
  if q_segments is not None:
    # An id no real token has, so no real query sees a padded key (padded queries are dropped).
    padding_id = jnp.min(kv_segments).astype(jnp.int32) - 1
    q_segments = _pad(q_segments.astype(jnp.int32), q_pad, padding_id)
    kv_segments = _pad(kv_segments.astype(jnp.int32), kv_pad, padding_id)
  args = (_pad(q, q_pad), _pad(k, kv_pad), _pad(v, kv_pad), q_segments, kv_segments)
  attend = functools.partial(_attention, causal=causal, blocks=blocks)
  if interpret is None:
    triton = functools.partial(attend, interpret=False)
    out = lax.platform_dependent(*args, cuda=triton, rocm=triton,
                                 default=functools.partial(attend, interpret=True))
  else:
    out = attend(*args, interpret=interpret)
  return out[:, :q_len]


def _pad(x: jax.Array, extra: int, value=0) -> jax.Array:
  """Pads the sequence axis (axis 1) at the end."""
  widths = [(0, 0)] * x.ndim
  widths[1] = (0, extra)
  return jnp.pad(x, widths, constant_values=value)


# The kernels. Grids are (block, batch, head); each program sees its own block of rows of the
# resident operand and the whole sequence of the streamed one, sliced in its loop.


def _dot(a: jax.Array, b: jax.Array, *, transpose_a: bool = False,
         transpose_b: bool = False) -> jax.Array:
  """a @ b (either side transposed), accumulated in float32. float32 inputs multiply in full
  precision: Triton would use TF32 by default."""
  dims = (((0 if transpose_a else 1,), (1 if transpose_b else 0,)), ((), ()))
  precision = lax.Precision.HIGHEST if a.dtype == jnp.float32 else None
  return lax.dot_general(a, b, dims, precision=precision, preferred_element_type=jnp.float32)


def _scores(q, k, q_start, k_start, q_segments, k_segments, *, diagonal: bool, scale: float):
  """Scaled q k^T of one tile, masked where the key is in the query's future (tiles on the
  diagonal) or in another segment."""
  s = _dot(q, k, transpose_b=True) * scale
  visible = None
  if diagonal:
    q_pos = q_start + jnp.arange(q.shape[0])
    k_pos = k_start + jnp.arange(k.shape[0])
    visible = q_pos[:, None] >= k_pos[None, :]
  if q_segments is not None:
    same = q_segments[:, None] == k_segments[None, :]
    visible = same if visible is None else visible & same
  return s if visible is None else jnp.where(visible, s, _MASK_VALUE)


def _score_grads(q, k, v, do, lse, delta, q_start, k_start, q_segments, k_segments, *,
                 diagonal: bool, scale: float):
  """Probabilities p of one tile, recomputed from the saved log-sum-exp, and the gradient of the
  scores, p * (do v^T - delta) with delta = rowsum(o * do), before the 1/sqrt(d) scale."""
  p = jnp.exp(_scores(q, k, q_start, k_start, q_segments, k_segments, diagonal=diagonal,
                      scale=scale) - lse[:, None])
  return p, p * (_dot(do, v, transpose_b=True) - delta[:, None])


def _over_keys(q_block: jax.Array, block_q: int, block_k: int, num_k_blocks: int, causal: bool,
               visit, carry):
  """Runs visit(key block, carry, diagonal=...) over the key blocks query block q_block sees.

  Causal: blocks wholly in the past go unmasked, the ones crossing the diagonal masked, and the
  ones wholly in the future are never visited."""
  if causal:
    past_end = lax.div(q_block * block_q, block_k)
    end = lax.div((q_block + 1) * block_q + block_k - 1, block_k)
  else:
    past_end = end = num_k_blocks
  carry = lax.fori_loop(0, past_end, functools.partial(visit, diagonal=False), carry)
  return lax.fori_loop(past_end, end, functools.partial(visit, diagonal=True), carry)


def _over_queries(k_block: jax.Array, block_q: int, block_k: int, num_q_blocks: int, causal: bool,
                  visit, carry):
  """Runs visit(query block, carry, diagonal=...) over the query blocks that see key block k_block
  (the mirror image of _over_keys)."""
  if causal:
    start = lax.div(k_block * block_k, block_q)
    diagonal_end = lax.div((k_block + 1) * block_k + block_q - 1, block_q)
  else:
    start = diagonal_end = 0
  carry = lax.fori_loop(start, diagonal_end, functools.partial(visit, diagonal=True), carry)
  return lax.fori_loop(diagonal_end, num_q_blocks, functools.partial(visit, diagonal=False), carry)


def _segments(ref, rows=slice(None)):
  return None if ref is None else ref[rows]


def _forward_kernel(q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref, o_ref, lse_ref, *, causal: bool,
                    block_k: int, scale: float):
  block_q, head_dim = q_ref.shape
  q_block = pl.program_id(0)
  q, q_segments = q_ref[...], _segments(q_seg_ref)

  def visit(k_block, carry, *, diagonal):
    acc, row_max, row_sum = carry
    keys = pl.ds(k_block * block_k, block_k)
    s = _scores(q, k_ref[keys, :], q_block * block_q, k_block * block_k, q_segments,
                _segments(kv_seg_ref, keys), diagonal=diagonal, scale=scale)
    new_max = jnp.maximum(row_max, s.max(axis=1))
    p = jnp.exp(s - new_max[:, None])
    rescale = jnp.exp(row_max - new_max)  # online softmax: earlier blocks used a smaller max
    acc = acc * rescale[:, None] + _dot(p.astype(v_ref.dtype), v_ref[keys, :])
    return acc, new_max, row_sum * rescale + p.sum(axis=1)

  init = (jnp.zeros((block_q, head_dim), jnp.float32), jnp.full(block_q, -jnp.inf, jnp.float32),
          jnp.zeros(block_q, jnp.float32))
  acc, row_max, row_sum = _over_keys(q_block, block_q, block_k, k_ref.shape[0] // block_k, causal,
                                     visit, init)
  o_ref[...] = (acc / row_sum[:, None]).astype(o_ref.dtype)
  lse_ref[...] = row_max + jnp.log(row_sum)


def _dq_kernel(q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref, do_ref, lse_ref, delta_ref, dq_ref, *,
               causal: bool, block_k: int, scale: float):
  block_q, head_dim = q_ref.shape
  q_block = pl.program_id(0)
  q, do, lse, delta = q_ref[...], do_ref[...], lse_ref[...], delta_ref[...]
  q_segments = _segments(q_seg_ref)

  def visit(k_block, dq, *, diagonal):
    keys = pl.ds(k_block * block_k, block_k)
    k = k_ref[keys, :]
    _, ds = _score_grads(q, k, v_ref[keys, :], do, lse, delta, q_block * block_q,
                         k_block * block_k, q_segments, _segments(kv_seg_ref, keys),
                         diagonal=diagonal, scale=scale)
    return dq + _dot(ds.astype(k.dtype), k)

  dq = _over_keys(q_block, block_q, block_k, k_ref.shape[0] // block_k, causal, visit,
                  jnp.zeros((block_q, head_dim), jnp.float32))
  dq_ref[...] = (dq * scale).astype(dq_ref.dtype)


def _dkv_kernel(q_ref, k_ref, v_ref, q_seg_ref, kv_seg_ref, do_ref, lse_ref, delta_ref, dk_ref,
                dv_ref, *, causal: bool, block_q: int, scale: float):
  block_k, head_dim = k_ref.shape
  k_block = pl.program_id(0)
  k, v, k_segments = k_ref[...], v_ref[...], _segments(kv_seg_ref)

  def visit(q_block, carry, *, diagonal):
    dk, dv = carry
    queries = pl.ds(q_block * block_q, block_q)
    q, do = q_ref[queries, :], do_ref[queries, :]
    p, ds = _score_grads(q, k, v, do, lse_ref[queries], delta_ref[queries], q_block * block_q,
                         k_block * block_k, _segments(q_seg_ref, queries), k_segments,
                         diagonal=diagonal, scale=scale)
    return (dk + _dot(ds.astype(q.dtype), q, transpose_a=True),
            dv + _dot(p.astype(do.dtype), do, transpose_a=True))

  zeros = jnp.zeros((block_k, head_dim), jnp.float32)
  dk, dv = _over_queries(k_block, block_q, block_k, q_ref.shape[0] // block_q, causal, visit,
                         (zeros, zeros))
  dk_ref[...] = (dk * scale).astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


# pallas_call wiring and the custom VJP.


def _specs(rows: int, head_dim: int, *, resident: bool, segments: bool):
  """BlockSpecs over the grid (block, batch, head) for a [batch, seq, heads, head_dim] tile, its
  [batch, seq] segment ids and a [batch, heads, seq] per-row statistic: the program's own block
  of `rows` rows when resident, else all `rows` (the whole sequence)."""
  row = (lambda n: n) if resident else (lambda n: 0)
  tile = pl.BlockSpec((None, rows, None, head_dim), lambda n, b, h: (b, row(n), h, 0))
  segment = pl.BlockSpec((None, rows), lambda n, b, h: (b, row(n))) if segments else None
  row_stat = pl.BlockSpec((None, None, rows), lambda n, b, h: (b, h, row(n)))
  return tile, segment, row_stat


def _call(kernel, tiling: Tiling, grid_blocks: int, q: jax.Array, interpret: bool, name: str,
          in_specs, out_specs, out_shape, *args):
  batch, _, heads, _ = q.shape
  return pl.pallas_call(
      kernel, grid=(grid_blocks, batch, heads), in_specs=in_specs, out_specs=out_specs,
      out_shape=out_shape, interpret=interpret, name=name,
      compiler_params=plgpu.CompilerParams(num_warps=tiling.num_warps,
                                           num_stages=tiling.num_stages))(*args)


def _output(shape, dtype, *operands) -> jax.ShapeDtypeStruct:
  """An output type varying over every mesh axis that an operand varies over: inside shard_map
  (check_vma), pallas_call cannot infer it."""
  varying = frozenset().union(*(jax.typeof(x).manual_axis_type.varying
                                for x in operands if x is not None))
  return jax.ShapeDtypeStruct(shape, dtype,
                              manual_axis_type=jax.sharding.ManualAxisType(varying=varying))


def _forward(q, k, v, q_segments, kv_segments, causal, blocks, interpret):
  (batch, q_len, heads, head_dim), kv_len = q.shape, k.shape[1]
  tiling, segments = blocks.forward, q_segments is not None
  q_tile, q_seg, q_stat = _specs(tiling.block_q, head_dim, resident=True, segments=segments)
  kv_all, kv_seg_all, _ = _specs(kv_len, head_dim, resident=False, segments=segments)
  kernel = functools.partial(_forward_kernel, causal=causal, block_k=tiling.block_k,
                             scale=head_dim ** -0.5)
  operands = (q, k, v, q_segments, kv_segments)
  out_shape = (_output(q.shape, q.dtype, *operands),
               _output((batch, heads, q_len), jnp.float32, *operands))
  out, lse = _call(kernel, tiling, q_len // tiling.block_q, q, interpret, "flash_attention_forward",
                   (q_tile, kv_all, kv_all, q_seg, kv_seg_all), (q_tile, q_stat), out_shape,
                   *operands)
  # Named, so that a remat policy can keep what the backward kernels need instead of running the
  # forward kernel again (the model's save_linear does, as xformers keeps them in the paper).
  out, lse = checkpoint_name(out, RESIDUAL_NAMES[0]), checkpoint_name(lse, RESIDUAL_NAMES[1])
  return out, (q, k, v, q_segments, kv_segments, out, lse)


def _backward(causal, blocks, interpret, residuals, do):
  q, k, v, q_segments, kv_segments, out, lse = residuals
  (_, q_len, _, head_dim), kv_len = q.shape, k.shape[1]
  segments, scale = q_segments is not None, head_dim ** -0.5
  delta = jnp.einsum("bqhd,bqhd->bhq", out.astype(jnp.float32), do.astype(jnp.float32))
  args = (q, k, v, q_segments, kv_segments, do, lse, delta)

  tiling = blocks.dq
  q_tile, q_seg, q_stat = _specs(tiling.block_q, head_dim, resident=True, segments=segments)
  kv_all, kv_seg_all, _ = _specs(kv_len, head_dim, resident=False, segments=segments)
  dq = _call(functools.partial(_dq_kernel, causal=causal, block_k=tiling.block_k, scale=scale),
             tiling, q_len // tiling.block_q, q, interpret, "flash_attention_dq",
             (q_tile, kv_all, kv_all, q_seg, kv_seg_all, q_tile, q_stat, q_stat), q_tile,
             _output(q.shape, q.dtype, *args), *args)

  tiling = blocks.dkv
  q_all, q_seg_all, q_stat_all = _specs(q_len, head_dim, resident=False, segments=segments)
  kv_tile, kv_seg, _ = _specs(tiling.block_k, head_dim, resident=True, segments=segments)
  dk, dv = _call(functools.partial(_dkv_kernel, causal=causal, block_q=tiling.block_q,
                                   scale=scale),
                 tiling, kv_len // tiling.block_k, q, interpret, "flash_attention_dkv",
                 (q_all, kv_tile, kv_tile, q_seg_all, kv_seg, q_all, q_stat_all, q_stat_all),
                 (kv_tile, kv_tile),
                 (_output(k.shape, k.dtype, *args), _output(v.shape, v.dtype, *args)), *args)
  return dq, dk, dv, None, None


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _attention(q, k, v, q_segments, kv_segments, causal, blocks, interpret):
  return _forward(q, k, v, q_segments, kv_segments, causal, blocks, interpret)[0]


_attention.defvjp(_forward, _backward)
