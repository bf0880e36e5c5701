"""The one entry point for attention: q, k, v [batch, seq, heads, head_dim] -> the same shape.

The layout is jax.nn.dot_product_attention's. Implementations:
  pallas  our flash-attention kernel (llama_jax/kernels/flash_attention.py): no attention weights
          stored, causal blocks above the diagonal skipped; Pallas interpret mode off GPU.
  cudnn   cuDNN's fused attention through jax.nn.dot_product_attention: NVIDIA GPUs, bfloat16 or
          float16 only.
  xla     plain JAX: materialises the [batch, heads, q, k] scores; the reference the kernels are
          tested against.
  auto    pallas on GPU (where the kernel takes the dtype and head_dim), xla elsewhere.
Choices follow what the code is compiled for, not the host that traces it: `auto` and the kernel's
interpret mode are decided per lowering platform (jax.lax.platform_dependent), the kernel's tiles by
the GPU of the active mesh (sharding.target_device), so a CPU host compiling for an H100 mesh gets
the Triton kernels with Hopper tiles.
Every implementation is local to its heads, so under shard_map with heads sharded over `tensor`
each device attends with its own heads.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from llama_jax.kernels.flash_attention import default_block_sizes, flash_attention, unsupported
from llama_jax.sharding import target_device

IMPLEMENTATIONS = ("auto", "pallas", "cudnn", "xla")


def _check_shapes(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool,
                  segment_ids: jax.Array | None) -> None:
  if not q.ndim == k.ndim == v.ndim == 4:
    raise ValueError("q, k, v must be [batch, seq, heads, head_dim]; got shapes "
                     f"{q.shape}, {k.shape}, {v.shape}")
  if k.shape != v.shape:
    raise ValueError(f"k and v shapes differ: {k.shape} vs {v.shape}")
  if (q.shape[0], q.shape[2], q.shape[3]) != (k.shape[0], k.shape[2], k.shape[3]):
    raise ValueError(f"q {q.shape} and k {k.shape} must agree in batch, heads and head_dim")
  if causal and q.shape[1] != k.shape[1]:
    raise ValueError(f"causal attention needs as many queries as keys; got {q.shape[1]} "
                     f"queries and {k.shape[1]} keys")
  if segment_ids is not None:
    if q.shape[1] != k.shape[1]:
      raise ValueError("segment_ids need as many queries as keys; got "
                       f"{q.shape[1]} queries and {k.shape[1]} keys")
    if segment_ids.shape != q.shape[:2] or not jnp.issubdtype(segment_ids.dtype, jnp.integer):
      raise ValueError(f"segment_ids must be integers of shape [batch, seq] = {q.shape[:2]}; "
                       f"got {segment_ids.dtype} {segment_ids.shape}")


def _same_segment(segment_ids: jax.Array) -> jax.Array:
  """[batch, 1, q, k]: whether query and key belong to the same segment (document)."""
  return (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, visible: jax.Array) -> jax.Array:
  """Plain-JAX attention of q [batch, q, heads, d] over k, v [batch, k, heads, d], each query
  seeing the keys where `visible` (boolean, broadcast to [batch, heads, q, k]) holds.

  Also what generation uses, where a few new queries attend to a longer KV cache.
  """
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  scores = jnp.where(visible, scores * q.shape[-1] ** -0.5, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def _xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None, *,
                   causal: bool) -> jax.Array:
  visible = jnp.ones((q.shape[1], k.shape[1]), dtype=bool)
  if causal:
    visible = jnp.tril(visible)
  if segment_ids is not None:
    visible = visible & _same_segment(segment_ids)
  return masked_attention(q, k, v, visible)


def _cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None, *,
                     causal: bool) -> jax.Array:
  device = target_device()
  if device.platform != "gpu":
    raise ValueError(f"attention implementation 'cudnn' needs an NVIDIA GPU; the code is "
                     f"compiled for {device.platform!r}")
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(f"attention implementation 'cudnn' takes bfloat16 or float16; got {q.dtype}")
  # cuDNN turns a mask into a materialised bias: packed documents cost [batch, q, k] memory here.
  mask = None if segment_ids is None else _same_segment(segment_ids)
  return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal,
                                      implementation="cudnn")


def _pallas_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None, *,
                      causal: bool) -> jax.Array:
  blocks = default_block_sizes(q.shape[-1], target_device())
  return flash_attention(q, k, v, segment_ids, causal=causal, block_sizes=blocks)


def _auto_attention(q: jax.Array, k: jax.Array, v: jax.Array, segment_ids: jax.Array | None, *,
                    causal: bool) -> jax.Array:
  """pallas where the program is lowered for a GPU, xla elsewhere and for what the kernel does
  not take (float16, other head dims)."""
  xla = functools.partial(_xla_attention, causal=causal)
  if unsupported(q, k, v):
    return xla(q, k, v, segment_ids)
  pallas = functools.partial(_pallas_attention, causal=causal)
  return jax.lax.platform_dependent(q, k, v, segment_ids, cuda=pallas, rocm=pallas, default=xla)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = True,
                          segment_ids: jax.Array | None = None,
                          implementation: str = "auto") -> jax.Array:
  """Softmax(q k^T / sqrt(head_dim)) v per head, with the causal mask when `causal`.

  segment_ids [batch, seq] (integers) keep packed documents apart: a query sees only the keys of
  its own segment.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"attention implementation {implementation!r} is not available; "
                     f"choose one of {IMPLEMENTATIONS}")
  _check_shapes(q, k, v, causal, segment_ids)
  attend = {"auto": _auto_attention, "pallas": _pallas_attention, "cudnn": _cudnn_attention,
            "xla": _xla_attention}[implementation]
  return attend(q, k, v, segment_ids, causal=causal)
