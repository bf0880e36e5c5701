"""The Pallas flash-attention kernel (interpret mode on CPU) against the plain-JAX reference.

Every check compares values and all three gradients with `implementation='xla'`, which
tests/test_attention.py checks against jax.nn.dot_product_attention and per-document attention.
"""

import dataclasses
import functools
import json
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import Mesh, PartitionSpec

from benchmarks import attention as attention_benchmark
from llama_jax.attention import dot_product_attention
from llama_jax.kernels.flash_attention import (
    BlockSizes,
    Tiling,
    default_block_sizes,
    flash_attention,
)
from llama_jax.model import Llama, ModelConfig

try:
  from jax import shard_map
except ImportError:  # jax versions before shard_map left experimental
  from jax.experimental.shard_map import shard_map

BLOCKS_16 = BlockSizes(Tiling(16, 16), Tiling(16, 16), Tiling(16, 16))
# Query and key blocks of different sizes, different in each kernel.
BLOCKS_MIXED = BlockSizes(Tiling(32, 16), Tiling(16, 32), Tiling(32, 16))
TOLERANCE = {jnp.float32: 2e-5, jnp.bfloat16: 3e-2}


def _inputs(batch=1, length=48, heads=2, head_dim=64, dtype=jnp.float32, seed=0):
  """q, k, v and an output cotangent do."""
  keys = jax.random.split(jax.random.key(seed), 4)
  return [jax.random.normal(key, (batch, length, heads, head_dim), jnp.float32).astype(dtype)
          for key in keys]


@functools.partial(jax.jit, static_argnums=0)
def _value_and_grads(attend, q, k, v, do):
  """attend(q, k, v) and its vjp (dq, dk, dv) for the cotangent do."""
  out, vjp = jax.vjp(attend, q, k, v)
  return (out, *vjp(do))


def _reference(q, k, v, do, causal=True, segment_ids=None):
  """Values and gradients of the xla implementation, in float32."""
  attend = functools.partial(dot_product_attention, causal=causal, segment_ids=segment_ids,
                             implementation="xla")
  return _value_and_grads(attend, *(x.astype(jnp.float32) for x in (q, k, v, do)))


def _assert_close(got, want, tolerance):
  for name, g, w in zip(("out", "dq", "dk", "dv"), got, want, strict=True):
    assert np.all(np.isfinite(g)), name
    np.testing.assert_allclose(np.asarray(g, np.float32), w, atol=tolerance, rtol=tolerance,
                               err_msg=name)


def _pallas(causal=True, segment_ids=None, block_sizes=BLOCKS_16):
  return functools.partial(flash_attention, segment_ids=segment_ids, causal=causal,
                           block_sizes=block_sizes)


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_values_and_gradients_match_reference(dtype, head_dim, causal):
  q, k, v, do = _inputs(head_dim=head_dim, dtype=dtype)
  got = _value_and_grads(_pallas(causal), q, k, v, do)
  assert all(x.dtype == dtype for x in got)
  _assert_close(got, _reference(q, k, v, do, causal), TOLERANCE[dtype])


@pytest.mark.parametrize("causal", [True, False])
def test_blocks_of_different_sizes(causal):
  q, k, v, do = _inputs(length=64)
  got = _value_and_grads(_pallas(causal, block_sizes=BLOCKS_MIXED), q, k, v, do)
  _assert_close(got, _reference(q, k, v, do, causal), TOLERANCE[jnp.float32])


@pytest.mark.parametrize("causal", [True, False])
def test_length_not_a_multiple_of_the_block_is_padded(causal):
  # Default block sizes (clamped to 64 here; 32/64 in the backward kernels) and 40 tokens.
  q, k, v, do = _inputs(length=40, head_dim=128)
  got = _value_and_grads(functools.partial(flash_attention, causal=causal), q, k, v, do)
  _assert_close(got, _reference(q, k, v, do, causal), TOLERANCE[jnp.float32])


def test_fewer_queries_than_keys_without_causal_mask():
  q, _, _, do = _inputs(length=24, seed=1)
  _, k, v, _ = _inputs(length=40)
  got = _value_and_grads(_pallas(causal=False), q, k, v, do)
  _assert_close(got, _reference(q, k, v, do, causal=False), TOLERANCE[jnp.float32])


@pytest.mark.parametrize("causal", [True, False])
def test_segment_ids_keep_documents_apart(causal):
  # Three documents whose boundaries fall inside blocks, 40 tokens (padded); the second row is
  # one document.
  q, k, v, do = _inputs(batch=2, length=40)
  segment_ids = jnp.array([[0] * 7 + [1] * 20 + [2] * 13, [5] * 40], jnp.int32)
  got = _value_and_grads(_pallas(causal, segment_ids), q, k, v, do)
  _assert_close(got, _reference(q, k, v, do, causal, segment_ids), TOLERANCE[jnp.float32])


def test_under_jit_grad_and_checkpoint():
  q, k, v, weights = _inputs()

  def loss(attend, q, k, v):
    return jnp.sum(jax.checkpoint(attend)(q, k, v) * weights)

  got = jax.jit(jax.value_and_grad(functools.partial(loss, _pallas()), (0, 1, 2)))(q, k, v)
  xla = functools.partial(dot_product_attention, implementation="xla")
  want = jax.value_and_grad(functools.partial(loss, xla), (0, 1, 2))(q, k, v)
  _assert_close((got[0], *got[1]), (want[0], *want[1]), 1e-4)


def test_inside_shard_map_with_heads_sharded_over_tensor():
  # 2 x 4 devices: batch over `data`, the 8 heads over `tensor` (2 per device).
  mesh = Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("data", "tensor"))
  q, k, v, do = _inputs(batch=2, length=32, heads=8)
  segment_ids = jnp.array([[0] * 20 + [1] * 12, [0] * 32], jnp.int32)
  heads = PartitionSpec("data", None, "tensor", None)

  def local(q, k, v, segment_ids):
    assert q.shape == (1, 32, 2, 64)  # each device attends with its own heads only
    return flash_attention(q, k, v, segment_ids, block_sizes=BLOCKS_16)

  attend = shard_map(local, mesh=mesh, in_specs=(heads, heads, heads, PartitionSpec("data")),
                     out_specs=heads)
  got = _value_and_grads(lambda q, k, v: attend(q, k, v, segment_ids), q, k, v, do)
  _assert_close(got, _reference(q, k, v, do, segment_ids=segment_ids), TOLERANCE[jnp.float32])


# Causal block skipping. NaN placed where a block that is only ever masked would be read must not
# reach the output: 0 * NaN is NaN, so had such a block been loaded and masked (as on the diagonal),
# its NaN would leak. Each test's control puts NaN in the masked part of a diagonal block and
# sees it leak, so the main check cannot pass merely because masking hides NaN.
TILINGS = [Tiling(16, 16), Tiling(32, 16), Tiling(16, 32)]
TILING_IDS = [f"q{t.block_q}-k{t.block_k}" for t in TILINGS]


def _with_nan(x, rows):
  return x.at[:, rows].set(jnp.nan)


@pytest.mark.parametrize("tiling", TILINGS, ids=TILING_IDS)
def test_forward_and_dq_never_read_key_blocks_above_the_diagonal(tiling):
  blocks, block_q = BlockSizes(tiling, tiling, tiling), tiling.block_q
  reach = -(-block_q // tiling.block_k) * tiling.block_k  # key blocks query block 0 visits
  q, k, v, do = _inputs(length=64)
  k_future, v_future = (_with_nan(x, slice(reach, None)) for x in (k, v))
  out, dq, _, _ = _value_and_grads(_pallas(block_sizes=blocks), q, k_future, v_future, do)
  want_out, want_dq, _, _ = _reference(q, k, v, do)
  for got, want in ((out, want_out), (dq, want_dq)):
    assert np.all(np.isfinite(got[:, :block_q]))
    np.testing.assert_allclose(got[:, :block_q], want[:, :block_q], atol=2e-5, rtol=2e-5)

  # Key block_q - 1 is masked for rows 0 .. block_q - 2 inside query block 0's diagonal.
  out, dq, _, _ = _value_and_grads(_pallas(block_sizes=blocks), q, k_future,
                                   _with_nan(v_future, block_q - 1), do)
  assert np.all(np.isnan(out[:, :block_q - 1])) and np.all(np.isnan(dq[:, :block_q - 1]))


@pytest.mark.parametrize("tiling", TILINGS, ids=TILING_IDS)
def test_dkv_never_reads_query_blocks_above_the_diagonal(tiling):
  blocks, block_k = BlockSizes(tiling, tiling, tiling), tiling.block_k
  reach = -(-tiling.block_q // block_k) * block_k  # keys from here on: no block sees query 0
  q, k, v, do = _inputs(length=64)
  q_past, do_past = (_with_nan(x, slice(None, reach)) for x in (q, do))
  _, _, dk, dv = _value_and_grads(_pallas(block_sizes=blocks), q_past, k, v, do_past)
  _, _, want_dk, want_dv = _reference(q, k, v, do)
  for got, want in ((dk, want_dk), (dv, want_dv)):
    assert np.all(np.isfinite(got[:, reach:]))
    np.testing.assert_allclose(got[:, reach:], want[:, reach:], atol=2e-5, rtol=2e-5)

  # Query `reach` masks the later keys of its own diagonal block.
  _, _, dk, dv = _value_and_grads(_pallas(block_sizes=blocks), q_past, k, v,
                                  _with_nan(do_past, reach))
  assert np.all(np.isnan(dv[:, reach + 1:reach + block_k]))


def test_bad_inputs_are_refused():
  q, k, v, _ = _inputs()
  with pytest.raises(ValueError, match="all bfloat16 or all float32; got float16"):
    flash_attention(*(x.astype(jnp.float16) for x in (q, k, v)))
  with pytest.raises(ValueError, match="all bfloat16 or all float32; got float32, bfloat16"):
    flash_attention(q, k.astype(jnp.bfloat16), v)
  with pytest.raises(ValueError, match=r"head_dim in \(16, 32, 64, 128\); got 48"):
    flash_attention(*_inputs(head_dim=48)[:3])
  for block in (24, 8):
    with pytest.raises(ValueError, match=f"block_q={block}: block sizes must be powers of two"):
      Tiling(block, 16)


def test_default_block_sizes_follow_the_gpu_generation():
  hopper, ampere = (SimpleNamespace(compute_capability=c) for c in ("9.0", "8.0"))
  assert default_block_sizes(128, hopper) != default_block_sizes(128, ampere)
  assert default_block_sizes(128, SimpleNamespace(compute_capability="10.0")) == \
      default_block_sizes(128, hopper)
  assert default_block_sizes(128, jax.devices("cpu")[0]) == default_block_sizes(128, ampere)
  assert default_block_sizes(32, hopper) == default_block_sizes(64, hopper)
  assert default_block_sizes(64, hopper) != default_block_sizes(128, hopper)


def test_model_with_pallas_attention_matches_xla(load_config):
  # The tiny model (head_dim 32): RoPE, scanned layers, save_linear remat, loss gradients.
  config = ModelConfig.from_dict(load_config("tiny").model)
  tokens = jax.random.randint(jax.random.key(1), (1, 33), 0, config.vocab_size)

  def loss_and_grads(attention):
    graphdef, state = nnx.split(Llama(dataclasses.replace(config, attention=attention),
                                      rngs=nnx.Rngs(0)))

    def loss(state):
      logits = nnx.merge(graphdef, state)(tokens[:, :-1])
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))

    return jax.jit(jax.value_and_grad(loss))(state)

  (loss, grads), (want_loss, want_grads) = loss_and_grads("pallas"), loss_and_grads("xla")
  np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
  for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)


def test_benchmark_prints_a_row_per_measurement(capsys):
  attention_benchmark.main(["--shapes=1x32x2x64", "--causal=true", "--iters=1"])
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [(r["implementation"], r["pass"]) for r in rows] == [
      (i, p) for i in ("pallas", "cudnn", "xla") for p in attention_benchmark.PASSES]
  for row in rows:
    assert row["shape"] == [1, 32, 2, 64] and row["dtype"] == "bfloat16" and row["causal"]
    if row["implementation"] == "cudnn":
      assert "needs an NVIDIA GPU" in row["skipped"]
    else:
      assert row["ms"] > 0 and row["tflops"] > 0


@pytest.mark.parametrize(("head_dim", "capability", "dtype", "causal", "segments"), [
    (64, "8.0", jnp.bfloat16, True, False), (128, "9.0", jnp.bfloat16, True, True),
    (128, "8.0", jnp.float32, False, False), (64, "9.0", jnp.float32, False, True)])
def test_kernels_lower_to_triton_for_gpus(head_dim, capability, dtype, causal, segments):
  # Lowering (not compiling) for CUDA runs Pallas's Triton lowering here, without a GPU: every
  # operation the kernels use must exist on that backend, with the default GPU block sizes.
  blocks = default_block_sizes(head_dim, SimpleNamespace(compute_capability=capability))
  shape = (2, 256, 4, head_dim)

  def value_and_grads(q, k, v, do, segment_ids):
    attend = functools.partial(flash_attention, segment_ids=segment_ids if segments else None,
                               causal=causal, block_sizes=blocks, interpret=False)
    out, vjp = jax.vjp(attend, q, k, v)
    return out, vjp(do)

  args = [jax.ShapeDtypeStruct(shape, dtype)] * 4 + [jax.ShapeDtypeStruct(shape[:2], jnp.int32)]
  lowered = jax.jit(value_and_grads).trace(*args).lower(lowering_platforms=("cuda",))
  assert lowered.as_text().count("xla.gpu.triton(") == 3  # forward, dq, dk/dv
