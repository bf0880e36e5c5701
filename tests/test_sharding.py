"""Sharding: mesh construction, the rules, and sharded losses/gradients equal to one device's."""

import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec

from llama_jax.gpu_compile import compile_and_dump
from llama_jax.model import ModelConfig
from llama_jax.sharding import MeshRules, check_fits, logical_rules, make_mesh, mesh_shape
from llama_jax.train_step import ShardedTraining

# 8 heads, FFN and vocabulary divisible by 8, so every mesh below splits them evenly.
CONFIG = ModelConfig(vocab_size=512, dim=64, n_layers=2, n_heads=8, ffn_dim=128,
                     context_length=16, dtype="float32")
MESHES = [(8, 1, 1), (1, 8, 1), (1, 1, 8), (2, 2, 2)]


def _training(shape, sequence_parallel, config=CONFIG, optimizer=None):
  sizes = dict(zip(("data", "fsdp", "tensor"), shape, strict=True))
  mesh = make_mesh(sizes, jax.devices()[:int(np.prod(shape))])
  mesh_rules = MeshRules(mesh, logical_rules(sequence_parallel))
  return ShardedTraining(config, optimizer or optax.adamw(1e-3), mesh_rules)


def _batch(config=CONFIG, batch_size=8):
  tokens = np.random.default_rng(0).integers(0, config.vocab_size,
                                             (batch_size, config.context_length + 1))
  return {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32)}


def _loss_and_grads(shape, sequence_parallel):
  training = _training(shape, sequence_parallel)
  state = training.init(jnp.int32(0))
  loss, grads = training.jit_loss_and_grads()(state.params, _batch())
  return float(loss), jax.tree.map(np.asarray, grads)


@pytest.fixture(scope="module")
def single_device():
  return _loss_and_grads((1, 1, 1), sequence_parallel=False)


def test_mesh_shape_fills_the_rest_axis():
  assert mesh_shape({"data": 1, "fsdp": -1, "tensor": 2}, 8) == (1, 4, 2)
  assert mesh_shape({"data": -1, "fsdp": 2, "tensor": 2}, 16) == (4, 2, 2)
  assert mesh_shape({"data": 2, "fsdp": 2, "tensor": 2}, 8) == (2, 2, 2)


@pytest.mark.parametrize("sizes,devices,message", [
    ({"data": 1, "fsdp": -1, "tensor": 3}, 8, "product divides 8"),
    ({"data": 2, "fsdp": 2, "tensor": 1}, 8, "uses 4 devices but there are 8"),
    ({"data": -1, "fsdp": -1, "tensor": 1}, 8, "at most one axis"),
    ({"data": 0, "fsdp": -1, "tensor": 1}, 8, "mesh.data=0"),
])
def test_bad_meshes_say_what_to_change(sizes, devices, message):
  with pytest.raises(ValueError, match=message):
    mesh_shape(sizes, devices)


def test_check_fits_names_every_problem():
  config = ModelConfig(vocab_size=1000, dim=96, n_layers=1, n_heads=6, ffn_dim=256,
                       context_length=30)
  with pytest.raises(ValueError) as error:
    check_fits(config, {"data": 1, "fsdp": 64, "tensor": 4}, batch_size=100,
               sequence_parallel=True)
  text = str(error.value)
  assert "model.n_heads=6 is not divisible by mesh.tensor=4" in text
  assert "{1, 2, 3, 6}" in text  # the tensor sizes that would work
  assert "model.dim=96 is not divisible by mesh.fsdp=64" in text
  assert "multiple of 64" in text  # the batch
  assert "model.context_length=30" in text
  assert "ffn_dim" not in text and "vocab_size" not in text  # 256 and 1000 split over 4
  check_fits(CONFIG, {"data": 2, "fsdp": 2, "tensor": 2}, batch_size=8, sequence_parallel=True)


def test_parameters_and_optimizer_state_follow_the_rules():
  training = _training((1, 4, 2), sequence_parallel=True)
  state = training.init(jnp.int32(0))
  params = state.params
  expected = {
      ("embedding",): ("tensor", "fsdp"),
      ("output",): ("fsdp", "tensor"),
      ("layers", "attention", "wq"): (None, "fsdp", "tensor", None),  # column-parallel by head
      ("layers", "attention", "wo"): (None, "tensor", None, "fsdp"),  # row-parallel
      ("layers", "feed_forward", "w1"): (None, "fsdp", "tensor"),
      ("layers", "feed_forward", "w2"): (None, "tensor", "fsdp"),
      ("layers", "attention_norm", "scale"): (None, "fsdp"),
  }
  for path, spec in expected.items():
    node = params
    for key in path:
      node = node[key]
    assert node[...].sharding.spec == PartitionSpec(*spec), path
  # Each device holds 1/8 of wq: FSDP splits `embed` in 4 and tensor splits `heads` in 2.
  wq = params["layers"]["attention"]["wq"][...]
  assert wq.addressable_shards[0].data.shape == (2, 16, 4, 8)
  adam_state = state.opt_state[0]
  for moments in (adam_state.mu, adam_state.nu):
    assert jax.tree.map(lambda x: x.sharding.spec, moments) == jax.tree.map(
        lambda x: x.sharding.spec, params)


@pytest.mark.parametrize("shape", MESHES)
@pytest.mark.parametrize("sequence_parallel", [False, True])
def test_sharded_loss_and_gradients_equal_one_device(single_device, shape, sequence_parallel):
  loss, grads = _loss_and_grads(shape, sequence_parallel)
  ref_loss, ref_grads = single_device
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for (path, grad), ref in zip(jax.tree_util.tree_leaves_with_path(grads),
                               jax.tree.leaves(ref_grads), strict=True):
    # Summation order differs across shards; entries near zero get an absolute bound.
    np.testing.assert_allclose(grad, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max(),
                               err_msg=jax.tree_util.keystr(path))


def test_sharded_step_updates_like_one_device():
  batch = _batch()
  results = []
  # Adam's first update is lr * g / (|g| + eps): with the usual tiny eps it is sign(g) for small
  # gradients, and a last-bit difference in g flips it. A large eps keeps the comparison about
  # the sharding, not about that amplification.
  optimizer = optax.adamw(1e-3, eps=1e-3)
  for shape in [(1, 1, 1), (2, 2, 2)]:
    training = _training(shape, sequence_parallel=True, optimizer=optimizer)
    state, metrics = training.step(training.init(jnp.int32(0)), batch)
    results.append((float(metrics["loss"]), jax.tree.map(np.asarray, state.params)))
  (loss, params), (ref_loss, ref_params) = results[1], results[0]
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), params,
               ref_params)


# --- the collectives of the compiled step -------------------------------------------------------

# Sizes chosen so that each dimension is recognisable in the HLO: batch 4, sequence 32, model 48,
# vocabulary 1000.
HLO_CONFIG = ModelConfig(vocab_size=1000, dim=48, n_layers=2, n_heads=8, ffn_dim=80,
                         context_length=32, dtype="float32")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (\w+)\[([\d,]*)\]\S* ([\w-]+)\(([^)]*)\)")


def _partitioned_step_hlo(shape, sequence_parallel, dump_dir: Path, config=HLO_CONFIG) -> str:
  """The train step's HLO right after the SPMD partitioner chose its collectives.

  XLA's GPU pipeline then rewrites an all-reduce whose result is only sliced (a dynamic-slice per
  device) into a reduce-scatter; the CPU pipeline has no such pass, so the test reads the
  partitioner's own output and counts that pattern as the reduce-scatter it is.
  """
  training = _training(shape, sequence_parallel, config)
  state = jax.eval_shape(training.init, jnp.int32(0))
  tokens = jax.ShapeDtypeStruct((4 * shape[1], config.context_length), jnp.int32)
  compile_and_dump(training.step.lower(state, {"inputs": tokens, "targets": tokens}), dump_dir,
                   xla_dump_hlo_pass_re="control-dep-rewriter")
  (path,) = dump_dir.glob("*jit__step*after_spmd-partitioning*.txt")
  return path.read_text()


def _collectives(hlo: str) -> dict[str, list[tuple[int, ...]]]:
  """Collective kind -> result shapes; all-reduces read only by dynamic-slices are
  'reduce-scatter'."""
  shapes, users, kinds = {}, {}, {}
  for line in hlo.splitlines():
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, _, dims, op, operands = match.groups()
    shapes[name] = tuple(int(d) for d in dims.split(",") if d)
    kinds[name] = op
    for operand in re.findall(r"%([\w.-]+)", operands):
      users.setdefault(operand, []).append(op)
  found = {}
  for name, op in kinds.items():
    if op in ("all-reduce", "all-gather", "reduce-scatter", "all-to-all"):
      if op == "all-reduce" and users.get(name) and set(users[name]) == {"dynamic-slice"}:
        op = "reduce-scatter"
      found.setdefault(op, []).append(shapes[name])
  return found


@pytest.mark.parametrize("shape", [(1, 1, 8), (2, 1, 4)])
def test_sequence_parallelism_turns_all_reduces_into_gather_and_scatter(tmp_path, shape):
  batch_per_device = 4 // (shape[0] * shape[1])
  activation = (batch_per_device, 32, 48)  # [batch, seq, dim] of one data shard, seq whole
  on = _collectives(_partitioned_step_hlo(shape, True, tmp_path / "on"))
  off = _collectives(_partitioned_step_hlo(shape, False, tmp_path / "off"))

  # SP on: every block's input is all-gathered along the sequence and every row-parallel output
  # reduce-scattered; no activation is all-reduced whole.
  assert on.get("all-gather", []).count(activation) >= 2
  assert on.get("reduce-scatter", []).count(activation) >= 2
  assert activation not in on.get("all-reduce", [])
  # SP off: Megatron's all-reduce after the row-parallel layers, and no sequence gathers.
  assert off.get("all-reduce", []).count(activation) >= 2
  assert activation not in off.get("all-gather", [])
  assert activation not in off.get("reduce-scatter", [])
  # Vocabulary parallelism: no collective ever carries the full 1000-entry vocabulary dimension.
  for collectives in (on, off):
    for kind, result_shapes in collectives.items():
      assert not [s for s in result_shapes if HLO_CONFIG.vocab_size in s], kind


def test_pallas_attention_runs_per_device_under_the_mesh():
  """A Pallas kernel is a custom call XLA cannot split: the model runs it under shard_map, each
  device on its own batch rows and heads (interpret mode here), and matches plain attention on
  one device."""
  xla = ModelConfig(vocab_size=512, dim=128, n_layers=2, n_heads=8, ffn_dim=128,
                    context_length=32, dtype="float32", attention="xla")
  pallas = ModelConfig(**{**xla.__dict__, "attention": "pallas"})
  results = []
  for config, shape in ((xla, (1, 1, 1)), (pallas, (2, 1, 4))):
    training = _training(shape, sequence_parallel=True, config=config)
    params = training.init(jnp.int32(0)).params
    loss_and_grads = training.jit_loss_and_grads()
    loss, grads = loss_and_grads(params, _batch(config))
    results.append((float(loss), jax.tree.leaves(grads)))
  # The sharded program holds the per-device region (shard_map lowers to a manual computation).
  assert "sdy.manual_computation" in loss_and_grads.lower(params, _batch(pallas)).as_text()
  (ref_loss, ref_grads), (loss, grads) = results
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  for grad, ref in zip(grads, ref_grads, strict=True):
    ref = np.asarray(ref)
    np.testing.assert_allclose(np.asarray(grad), ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_fsdp_gathers_block_weights_in_the_compute_dtype(tmp_path):
  """The float32 parameters are cast to bfloat16 before the all-gather (half the bytes), as the
  planner's communication estimate assumes."""
  config = ModelConfig(**{**HLO_CONFIG.__dict__, "dtype": "bfloat16"})
  hlo = _partitioned_step_hlo((1, 8, 1), True, tmp_path, config)
  block_weights = {(48, 8, 6), (8, 6, 48), (48, 80), (80, 48)}  # wq/wk/wv, wo, w1/w3, w2
  gathered = [(match.group(2), tuple(int(d) for d in match.group(3).split(",")))
              for match in map(_INSTRUCTION.match, hlo.splitlines())
              if match and match.group(4) == "all-gather" and match.group(3)]
  weights = [dtype for dtype, dims in gathered if dims in block_weights]
  assert len(weights) >= 4 and set(weights) == {"bf16"}, gathered
