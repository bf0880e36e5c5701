"""The one entry point for attention: q, k, v [batch, seq, heads, head_dim] -> the same shape.

The layout is jax.nn.dot_product_attention's. Implementations:
  xla  plain JAX: materialises the [batch, heads, q, k] scores; the reference the kernels are
       tested against.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMPLEMENTATIONS = ("xla",)


def _check_shapes(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> None:
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


def _xla_attention(q: jax.Array, k: jax.Array, v: jax.Array, causal: bool) -> jax.Array:
  scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32)
  scores = scores * q.shape[-1] ** -0.5
  if causal:
    length = q.shape[1]
    visible = jnp.tril(jnp.ones((length, length), dtype=bool))
    scores = jnp.where(visible, scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bhqk,bkhd->bqhd", weights, v)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, *, causal: bool = True,
                          implementation: str = "xla") -> jax.Array:
  """Softmax(q k^T / sqrt(head_dim)) v per head, with the causal mask when `causal`."""
  _check_shapes(q, k, v, causal)
  if implementation == "xla":
    return _xla_attention(q, k, v, causal)
  raise ValueError(f"attention implementation {implementation!r} is not available; "
                   f"choose one of {IMPLEMENTATIONS}")
