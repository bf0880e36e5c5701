"""The LLaMA-1 decoder in Flax NNX (Touvron et al. 2023, section 2.2).

Pre-normalisation with RMSNorm, SwiGLU feed-forward, rotary position embeddings, no biases and
untied input/output embeddings. The layers are created stacked (a leading `layers` axis on every
block parameter) and run with `jax.lax.scan`, so compile time does not grow with depth.

Every parameter carries logical axis names in its `out_sharding` metadata, and the main activations
are constrained by logical names too; llama_jax.sharding maps both onto a device mesh. Parameters
are float32, the forward pass computes in `config.dtype` (bfloat16 by default) and returns float32
logits.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from llama_jax.attention import IMPLEMENTATIONS, dot_product_attention, masked_attention
from llama_jax.kernels.flash_attention import RESIDUAL_NAMES
from llama_jax.sharding import (
    HIDDEN,
    KV_CACHE,
    LOGITS,
    PER_HEAD,
    RESIDUAL,
    constrain,
    shard_locally,
    target_device,
    vocab_parallel_lookup,
)

REMAT_POLICIES = ("none", "full", "save_linear")

# Names given (with `checkpoint_name`) to the output of every linear layer in a block; the
# `save_linear` policy keeps these and recomputes norms, RoPE, SiLU and attention, except that
# the flash kernel's output and log-sum-exps are kept too (as the paper's xformers attention keeps
# them for its backward): the backward kernels need them, and rerunning the forward kernel for them
# would add half the forward's attention FLOPs again. The plain XLA attention recomputes its scores.
LINEAR_OUTPUTS = ("query", "key", "value", "attention_out", "mlp_gate", "mlp_up", "mlp_down")
SAVED_BY_SAVE_LINEAR = LINEAR_OUTPUTS + RESIDUAL_NAMES

# No published LLaMA-1 initialisation; N(0, 0.02) is Hugging Face's LLaMA default.
_INIT = nnx.initializers.normal(stddev=0.02)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Hyperparameters of the network (the `model` section of a config file)."""

  vocab_size: int
  dim: int
  n_layers: int
  n_heads: int
  ffn_dim: int
  context_length: int = 2048
  norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  dtype: str = "bfloat16"
  param_dtype: str = "float32"
  remat: str = "save_linear"
  attention: str = "xla"

  def __post_init__(self):
    for name in ("vocab_size", "dim", "n_layers", "n_heads", "ffn_dim", "context_length"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"model.{name} must be a positive integer, got {value!r}")
    if self.dim % self.n_heads:
      raise ValueError(
          f"model.dim ({self.dim}) must be divisible by model.n_heads ({self.n_heads})")
    if self.head_dim % 2:
      raise ValueError(f"head dim dim/n_heads = {self.head_dim} must be even for RoPE")
    for name in ("dtype", "param_dtype"):
      try:
        jnp.dtype(getattr(self, name))
      except TypeError:
        raise ValueError(
            f"model.{name}={getattr(self, name)!r} is not a dtype name "
            "(use e.g. 'bfloat16' or 'float32')") from None
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f"model.remat={self.remat!r}; choose one of {REMAT_POLICIES}")
    if self.attention not in IMPLEMENTATIONS:
      raise ValueError(f"model.attention={self.attention!r}; choose one of {IMPLEMENTATIONS}")

  @classmethod
  def from_dict(cls, model: Mapping) -> ModelConfig:
    """Builds from the `model` section of a config, naming unknown or missing keys."""
    model = dict(model)
    known = {f.name for f in dataclasses.fields(cls)}
    if unknown := sorted(set(model) - known):
      raise ValueError(f"unknown model config keys {unknown}; known keys: {sorted(known)}")
    if missing := sorted(
        k for k in known if model.get(k) is None
        and cls.__dataclass_fields__[k].default is dataclasses.MISSING):
      raise ValueError(f"model config is missing required keys {missing}")
    return cls(**model)

  @property
  def head_dim(self) -> int:
    return self.dim // self.n_heads


def _param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str, ...], config: ModelConfig,
           init=_INIT) -> nnx.Param:
  # eager_sharding=False: the logical names are data for the sharding rules; placing the arrays on
  # a mesh is the caller's job (jit out_shardings), so building a model needs no mesh in context.
  return nnx.Param(init(rngs.params(), shape, jnp.dtype(config.param_dtype)),
                   out_sharding=axes, eager_sharding=False)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _cpu_einsum(equation: str, x: jax.Array, w: jax.Array) -> jax.Array:
  """jnp.einsum(equation, x, w) whose gradient by w is contracted straight into w's axis order.

  Autodiff computes it transposed and transposes back; XLA's CPU backend folds that into a copy
  of the [tokens, features] gradient transposed and a matmul of two transposed operands, 4 to 5x
  slower than this one (benchmarks/train_cpu.py).
  """
  return jnp.einsum(equation, x, w)


def _cpu_einsum_fwd(equation: str, x: jax.Array, w: jax.Array):
  return jnp.einsum(equation, x, w), (x, w)


def _cpu_einsum_bwd(equation: str, residuals: tuple[jax.Array, jax.Array], grad: jax.Array):
  x, w = residuals
  operands, out = equation.split("->")
  lhs, rhs = operands.split(",")
  return jnp.einsum(f"{out},{rhs}->{lhs}", grad, w), jnp.einsum(f"{lhs},{out}->{rhs}", x, grad)


_cpu_einsum.defvjp(_cpu_einsum_fwd, _cpu_einsum_bwd)


def _linear(x: jax.Array, kernel: nnx.Param, equation: str, name: str,
            logical_axes: tuple[str, ...]) -> jax.Array:
  einsum = _cpu_einsum if target_device().platform == "cpu" else jnp.einsum
  # The constraint on each output is what makes a projection column- or row-parallel.
  y = constrain(einsum(equation, x, kernel[...].astype(x.dtype)), logical_axes)
  return checkpoint_name(y, name)


class RMSNorm(nnx.Module):
  """x / rms(x) * scale, computed in float32 (Zhang & Sennrich 2019)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.eps = config.norm_eps
    self.scale = _param(rngs, (config.dim,), ("embed",), config, nnx.initializers.ones)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.eps)
    return normed.astype(x.dtype) * self.scale[...].astype(x.dtype)


def rope_angles(positions: jax.Array, head_dim: int,
                theta: float) -> tuple[jax.Array, jax.Array]:
  """cos and sin of the rotation angles at integer `positions` [batch, seq] (batch may be 1),
  each [batch, seq, head_dim // 2] float32."""
  inv_freq = 1.0 / theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
  """Rotates interleaved pairs (x0, x1), (x2, x3), ... of x [batch, seq, heads, head_dim].

  This is Meta's layout; Hugging Face checkpoints rotate halves instead and are converted by
  permuting the q/k projection rows (see llama_jax.formats.layout).
  """
  pairs = x.astype(jnp.float32).reshape(*x.shape[:-1], -1, 2)
  even, odd = pairs[..., 0], pairs[..., 1]
  cos, sin = cos[:, :, None, :], sin[:, :, None, :]
  rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
  return rotated.reshape(x.shape).astype(x.dtype)


class Attention(nnx.Module):
  """Causal multi-head self-attention with RoPE on queries and keys."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.implementation = config.attention
    qkv_shape = (config.dim, config.n_heads, config.head_dim)
    qkv_axes = ("embed", "heads", "kv")
    self.wq = _param(rngs, qkv_shape, qkv_axes, config)
    self.wk = _param(rngs, qkv_shape, qkv_axes, config)
    self.wv = _param(rngs, qkv_shape, qkv_axes, config)
    self.wo = _param(rngs, (config.n_heads, config.head_dim, config.dim), ("heads", "kv", "embed"),
                     config)

  def _project(self, x: jax.Array, cos: jax.Array,
               sin: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    q = apply_rope(_linear(x, self.wq, "btd,dhk->bthk", "query", PER_HEAD), cos, sin)
    k = apply_rope(_linear(x, self.wk, "btd,dhk->bthk", "key", PER_HEAD), cos, sin)
    v = _linear(x, self.wv, "btd,dhk->bthk", "value", PER_HEAD)
    return q, k, v

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array,
               visible: jax.Array | None = None) -> jax.Array:
    """Causal attention, or where `visible` [batch, 1, q, k] is given, attention over the keys it
    allows (plain JAX: evaluation's shared contexts)."""
    if visible is None:
      attend = functools.partial(dot_product_attention, causal=True,
                                 implementation=self.implementation)
      out = shard_locally(attend, (PER_HEAD,) * 3, PER_HEAD)(*self._project(x, cos, sin))
    else:
      out = masked_attention(*self._project(x, cos, sin), visible)
    return _linear(out, self.wo, "bthk,hkd->btd", "attention_out", RESIDUAL)

  def decode(self, x: jax.Array, cos: jax.Array, sin: jax.Array, cache: KVCache, layer: jax.Array,
             index: jax.Array, visible: jax.Array) -> tuple[jax.Array, KVCache]:
    """Attention of x's tokens, written to cache slots index.., over the cached keys `visible`
    to them ([batch, 1, new tokens, cache slots])."""
    q, k, v = self._project(x, cos, sin)
    # Only the new slots of the stacked cache are written: under the decode loop XLA updates the
    # cache in place instead of copying it once per layer.
    cache = KVCache(*(constrain(jax.lax.dynamic_update_slice(
        stacked, new[None].astype(stacked.dtype), (layer, 0, index, 0, 0)), KV_CACHE)
        for stacked, new in zip(cache, (k, v), strict=True)))
    out = masked_attention(q, cache.keys[layer], cache.values[layer], visible)
    return _linear(out, self.wo, "bthk,hkd->btd", "attention_out", RESIDUAL), cache


class FeedForward(nnx.Module):
  """SwiGLU: w2(silu(w1 x) * w3 x) (Shazeer 2020)."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.w1 = _param(rngs, (config.dim, config.ffn_dim), ("embed", "mlp"), config)
    self.w3 = _param(rngs, (config.dim, config.ffn_dim), ("embed", "mlp"), config)
    self.w2 = _param(rngs, (config.ffn_dim, config.dim), ("mlp", "embed"), config)

  def __call__(self, x: jax.Array) -> jax.Array:
    gate = _linear(x, self.w1, "btd,df->btf", "mlp_gate", HIDDEN)
    up = _linear(x, self.w3, "btd,df->btf", "mlp_up", HIDDEN)
    return _linear(jax.nn.silu(gate) * up, self.w2, "btf,fd->btd", "mlp_down", RESIDUAL)


class Block(nnx.Module):
  """x + attention(norm(x)), then + feed_forward(norm(.)): pre-normalisation."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.attention_norm = RMSNorm(config, rngs=rngs)
    self.attention = Attention(config, rngs=rngs)
    self.ffn_norm = RMSNorm(config, rngs=rngs)
    self.feed_forward = FeedForward(config, rngs=rngs)

  def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array,
               visible: jax.Array | None = None) -> jax.Array:
    x = x + self.attention(self.attention_norm(x), cos, sin, visible)
    return x + self.feed_forward(self.ffn_norm(x))

  def decode(self, x: jax.Array, cos: jax.Array, sin: jax.Array, cache: KVCache, layer: jax.Array,
             index: jax.Array, visible: jax.Array) -> tuple[jax.Array, KVCache]:
    attended, cache = self.attention.decode(self.attention_norm(x), cos, sin, cache, layer, index,
                                            visible)
    x = x + attended
    return x + self.feed_forward(self.ffn_norm(x)), cache


def _remat(fn, policy: str):
  if policy == "none":
    return fn
  saveable = (jax.checkpoint_policies.save_only_these_names(*SAVED_BY_SAVE_LINEAR)
              if policy == "save_linear" else jax.checkpoint_policies.nothing_saveable)
  # prevent_cse=False is safe under scan and lets XLA share work between the recomputed copies.
  return jax.checkpoint(fn, policy=saveable, prevent_cse=False)


class Llama(nnx.Module):
  """tokens int32 [batch, seq] -> logits float32 [batch, seq, vocab]."""

  def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embedding = _param(rngs, (config.vocab_size, config.dim), ("vocab", "embed"), config)

    @nnx.split_rngs(splits=config.n_layers)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def stacked_blocks(rngs: nnx.Rngs) -> Block:
      return Block(config, rngs=rngs)

    self.layers = stacked_blocks(rngs)
    self.norm = RMSNorm(config, rngs=rngs)
    self.output = _param(rngs, (config.dim, config.vocab_size), ("embed", "vocab"), config)

  def _embed(self, tokens: jax.Array) -> jax.Array:
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
      raise ValueError(f"tokens must be integers shaped [batch, seq], got {tokens.dtype}"
                       f"{list(tokens.shape)}")
    # The table is gathered over `fsdp` first (as ZeRO-3 gathers any weight before use), in the
    # compute dtype (rows are copied, so casting first changes no value and halves the bytes);
    # its vocabulary stays split over `tensor`, where each device looks up the tokens it holds.
    table = constrain(self.embedding[...].astype(self.config.dtype), ("vocab", None))
    return constrain(vocab_parallel_lookup(table, tokens), RESIDUAL)

  def logits(self, x: jax.Array) -> jax.Array:
    """The final norm and output layer on residual-stream states x [batch, seq, dim]."""
    logits = jnp.einsum("btd,dv->btv", self.norm(x), self.output[...].astype(x.dtype),
                        preferred_element_type=jnp.float32)
    return constrain(logits, LOGITS)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    return self.logits(self.hidden(tokens))

  def hidden(self, tokens: jax.Array, positions: jax.Array | None = None,
             segments: jax.Array | None = None) -> jax.Array:
    """The residual stream after the last layer, before the final norm: what `logits` takes, for
    callers that need the logits of a few positions only (evaluation scores continuations).

    Evaluation's shared contexts: with `segments` [batch, seq], a token of segment s > 0 sees the
    earlier tokens of segment 0 (a context) and of its own segment, so several continuations of
    one context share a row and the context is computed once; `positions` [batch, seq] are then
    each token's position in its own context + continuation (for RoPE). Default: 0, 1, 2, ...
    and plain causal attention.
    """
    config = self.config
    x = self._embed(tokens)
    if tokens.shape[1] > config.context_length:
      raise ValueError(f"sequence length {tokens.shape[1]} exceeds model.context_length "
                       f"{config.context_length}")
    if positions is None:
      positions = jnp.arange(tokens.shape[1])[None]
    cos, sin = rope_angles(positions, config.head_dim, config.rope_theta)
    visible = None
    if segments is not None:
      keys = jnp.arange(tokens.shape[1])
      seen = (segments[:, None, :] == 0) | (segments[:, None, :] == segments[:, :, None])
      visible = (seen & (keys[None, :] <= keys[:, None])[None])[:, None]
    block_def, block_state = nnx.split(self.layers)

    def layer(x, state):
      return constrain(nnx.merge(block_def, state)(x, cos, sin, visible), RESIDUAL), None

    x, _ = jax.lax.scan(_remat(layer, config.remat), x, block_state)
    return x

  def decode(self, tokens: jax.Array, cache: KVCache, index: jax.Array,
             padding: jax.Array) -> tuple[jax.Array, KVCache]:
    """Generation with a KV cache: the logits after the last of `tokens` [batch, new], and the
    cache with their keys and values written to slots index .. index + new - 1.

    Row b's first `padding[b]` cache slots are left padding: never attended to, and the row's
    positions (for RoPE) count from its first real slot, so a left-padded prompt gives the logits
    its unpadded self would.
    """
    config = self.config
    x = self._embed(tokens)
    slots = index + jnp.arange(tokens.shape[1])
    positions = jnp.maximum(slots[None, :] - padding[:, None], 0)
    cos, sin = rope_angles(positions, config.head_dim, config.rope_theta)
    keys = jnp.arange(cache.keys.shape[2])
    visible = (keys[None, None, :] <= slots[None, :, None]) & (
        keys[None, None, :] >= padding[:, None, None])
    visible = visible[:, None]  # [batch, 1 (heads), new, slots]
    block_def, block_state = nnx.split(self.layers)

    def layer(carry, inputs):
      x, cache = carry
      state, index_of_layer = inputs
      x, cache = nnx.merge(block_def, state).decode(x, cos, sin, cache, index_of_layer, index,
                                                    visible)
      return (constrain(x, RESIDUAL), cache), None

    (x, cache), _ = jax.lax.scan(layer, (x, cache),
                                 (block_state, jnp.arange(config.n_layers)))
    return self.logits(x[:, -1:])[:, 0], cache


class KVCache(NamedTuple):
  """Keys and values of every layer, [layers, batch, slots, heads, head_dim] each."""

  keys: jax.Array
  values: jax.Array


def empty_cache(config: ModelConfig, batch: int, slots: int) -> KVCache:
  """A zero KV cache for `batch` rows of `slots` tokens, in the compute dtype."""
  shape = (config.n_layers, batch, slots, config.n_heads, config.head_dim)
  return KVCache(*(constrain(jnp.zeros(shape, config.dtype), KV_CACHE) for _ in range(2)))


def abstract_model(config: ModelConfig) -> Llama:
  """The model with shapes and dtypes but no memory allocated (jax.eval_shape)."""
  return nnx.eval_shape(lambda: Llama(config, rngs=nnx.Rngs(0)))


def count_params(model: Llama) -> int:
  return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
