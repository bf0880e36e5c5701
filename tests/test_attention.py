"""llama_jax.attention against jax.nn.dot_product_attention (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llama_jax.attention import dot_product_attention


def _qkv(batch=2, length=24, heads=3, head_dim=16):
  keys = jax.random.split(jax.random.key(0), 3)
  return [jax.random.normal(k, (batch, length, heads, head_dim), jnp.float32) for k in keys]


@pytest.mark.parametrize("causal", [True, False])
def test_xla_matches_jax_reference(causal):
  q, k, v = _qkv()

  def ours(q, k, v):
    return jnp.sum(jnp.sin(dot_product_attention(q, k, v, causal=causal)))

  def reference(q, k, v):
    return jnp.sum(jnp.sin(jax.nn.dot_product_attention(q, k, v, is_causal=causal)))

  np.testing.assert_allclose(dot_product_attention(q, k, v, causal=causal),
                             jax.nn.dot_product_attention(q, k, v, is_causal=causal),
                             atol=1e-5, rtol=1e-5)
  for got, want in zip(jax.grad(ours, (0, 1, 2))(q, k, v), jax.grad(reference, (0, 1, 2))(q, k, v),
                       strict=True):
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_causal_first_query_sees_only_the_first_key():
  q, k, v = _qkv()
  out = dot_product_attention(q, k, v, causal=True)
  np.testing.assert_allclose(out[:, 0], v[:, 0], atol=1e-6)


def test_bfloat16_inputs_keep_their_dtype():
  q, k, v = (x.astype(jnp.bfloat16) for x in _qkv())
  out = dot_product_attention(q, k, v)
  assert out.dtype == jnp.bfloat16
  reference = jax.nn.dot_product_attention(*(x.astype(jnp.float32) for x in (q, k, v)),
                                           is_causal=True)
  np.testing.assert_allclose(out.astype(jnp.float32), reference, atol=2e-2)


def test_bad_arguments_are_refused():
  q, k, v = _qkv()
  with pytest.raises(ValueError, match=r"\[batch, seq, heads, head_dim\]"):
    dot_product_attention(q[0], k[0], v[0])
  with pytest.raises(ValueError, match="k and v shapes differ"):
    dot_product_attention(q, k, v[:, :10])
  with pytest.raises(ValueError, match="must agree in batch, heads and head_dim"):
    dot_product_attention(q[:, :, :2], k, v)
  with pytest.raises(ValueError, match="causal attention needs as many queries as keys"):
    dot_product_attention(q[:, :5], k, v)
  with pytest.raises(ValueError, match="implementation 'flash' is not available"):
    dot_product_attention(q, k, v, implementation="flash")
  with pytest.raises(ValueError, match=r"segment_ids must be integers of shape \[batch, seq\]"):
    dot_product_attention(q, k, v, segment_ids=jnp.zeros((2, 23), jnp.int32))
  with pytest.raises(ValueError, match=r"segment_ids must be integers"):
    dot_product_attention(q, k, v, segment_ids=jnp.zeros((2, 24)))
  with pytest.raises(ValueError, match="segment_ids need as many queries as keys"):
    dot_product_attention(q[:, :5], k, v, causal=False, segment_ids=jnp.zeros((2, 5), jnp.int32))


@pytest.mark.parametrize("causal", [True, False])
def test_segment_ids_equal_attention_per_document(causal):
  # Two packed documents of 10 and 14 tokens attend exactly as each would alone.
  q, k, v = _qkv()
  segment_ids = jnp.array([[0] * 10 + [1] * 14, [3] * 10 + [4] * 14], jnp.int32)
  packed = dot_product_attention(q, k, v, causal=causal, segment_ids=segment_ids)
  for part in (slice(0, 10), slice(10, 24)):
    alone = dot_product_attention(q[:, part], k[:, part], v[:, part], causal=causal)
    np.testing.assert_allclose(packed[:, part], alone, atol=1e-5, rtol=1e-5)


def test_auto_is_xla_on_cpu_and_cudnn_needs_a_gpu():
  for head_dim in (16, 12):  # 12: a head_dim the Pallas kernel does not take
    q, k, v = _qkv(head_dim=head_dim)
    np.testing.assert_array_equal(dot_product_attention(q, k, v),
                                  dot_product_attention(q, k, v, implementation="xla"))
  with pytest.raises(ValueError, match="'cudnn' needs an NVIDIA GPU; the code is compiled for"):
    dot_product_attention(q, k, v, implementation="cudnn")
