"""The training step: the train state, the loss, and the sharded, jitted step
`(state, batch) -> (state, metrics)` (ShardedTraining). The program that drives it is
llama_jax.train.

The model is split once (`nnx.split`) into its static graph and its parameter state; the step is a
pure function of the state, compiled with the shardings that llama_jax.sharding derives from the
logical axis names, so parameters, gradients and optimizer state are split over `fsdp` and
`tensor` from the moment they are created.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from llama_jax.model import Llama, ModelConfig, abstract_model
from llama_jax.sharding import (
    TOKENS,
    MeshRules,
    activation_sharding,
    param_shardings,
    target_device,
)

Batch = dict[str, jax.Array]  # "inputs" and "targets": int32 [batch, seq]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32 scalar: optimizer steps taken
  params: nnx.State
  opt_state: optax.OptState


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy of float32 logits [batch, seq, vocab].

  The target's logit is picked with a one-hot mask and a sum rather than an indexed gather: with
  the vocabulary split over `tensor`, each device then reduces its own slice and only
  [batch, seq] partial sums cross devices; the full-vocabulary logits are never gathered.
  """
  log_normalizer = jax.nn.logsumexp(logits, axis=-1)
  is_target = jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.bool_)
  target_logit = jnp.sum(jnp.where(is_target, logits, 0.0), axis=-1)
  return jnp.mean(log_normalizer - target_logit)


# Rows (sequences x positions) of one chunk of output_cross_entropy: enough for fast matmuls.
OUTPUT_LOSS_CHUNK_ROWS = 512


def _chunked_output_loss(x: jax.Array, w: jax.Array, targets: jax.Array, grads: bool):
  """output_cross_entropy over chunks of positions; with `grads`, also its gradients by x and w."""
  batch, seq, _ = x.shape
  # Positions per chunk: the most that divide seq within OUTPUT_LOSS_CHUNK_ROWS rows.
  length = max(n for n in range(1, min(seq, max(1, OUTPUT_LOSS_CHUNK_ROWS // batch)) + 1)
               if seq % n == 0)

  def chunks(a):  # [batch, seq, ...] -> [seq / length, batch, length, ...]
    return a.reshape(batch, seq // length, length, *a.shape[2:]).swapaxes(0, 1)

  def chunk_loss(w_grad, chunk):
    x, targets = chunk
    logits = jnp.einsum("btd,dv->btv", x, w, preferred_element_type=jnp.float32)
    if not grads:
      return w_grad, cross_entropy(logits, targets)
    # float32 logits_grad, as autodiff keeps it: the two matmuls promote x and w to it.
    loss, logits_grad = jax.value_and_grad(cross_entropy)(logits, targets)
    w_grad += jnp.einsum("btd,btv->dv", x, logits_grad)
    return w_grad, (loss, jnp.einsum("btv,dv->btd", logits_grad, w))

  # Every chunk has as many tokens: the mean of the chunks' means is the batch's.
  w_grad, out = jax.lax.scan(chunk_loss, jnp.zeros(w.shape, jnp.float32) if grads else None,
                             (chunks(x), chunks(targets)))
  if not grads:
    return jnp.mean(out)
  losses, x_grads = out
  n = losses.shape[0]
  x_grad = x_grads.swapaxes(0, 1).reshape(x.shape) / n
  return jnp.mean(losses), (x_grad.astype(x.dtype), (w_grad / n).astype(w.dtype))


@jax.custom_vjp
def output_cross_entropy(x: jax.Array, w: jax.Array, targets: jax.Array) -> jax.Array:
  """cross_entropy of the logits x @ w (x [batch, seq, dim], w [dim, vocab]) for the CPU.

  XLA's CPU backend runs the plain loss as separate passes over [batch, seq, vocab] arrays (the
  logits, their exponentials, the where-selected targets, the gradient twice, once transposed for
  a slow matmul): 4/5 of configs/tiny.py's step at its 32000-token vocabulary. Here the logits are
  made a chunk of positions at a time, and the chunk's gradients by x and w with them, in the
  forward pass (the backward scales them), so nothing of the vocabulary's size outlives a chunk.
  """
  return _chunked_output_loss(x, w, targets, grads=False)


def _output_cross_entropy_fwd(x, w, targets):
  return _chunked_output_loss(x, w, targets, grads=True)


def _output_cross_entropy_bwd(grads, loss_grad):
  return tuple((loss_grad * g).astype(g.dtype) for g in grads) + (None,)


output_cross_entropy.defvjp(_output_cross_entropy_fwd, _output_cross_entropy_bwd)


def loss_fn(params: nnx.State, graphdef: nnx.GraphDef, batch: Batch) -> jax.Array:
  model = nnx.merge(graphdef, params)
  if target_device().platform != "cpu":
    return cross_entropy(model(batch["inputs"]), batch["targets"])
  x = model.norm(model.hidden(batch["inputs"]))  # Llama.logits, fused with the loss
  return output_cross_entropy(x, model.output[...].astype(x.dtype), batch["targets"])


class ShardedTraining:
  """The compiled functions of one training set-up: model, optimizer, mesh and rules."""

  def __init__(self, model_config: ModelConfig, optimizer: optax.GradientTransformation,
               mesh_rules: MeshRules, *, schedule: optax.Schedule | None = None,
               micro_batches: int = 1):
    self.model_config = model_config
    self.optimizer = optimizer
    self.mesh_rules = mesh_rules
    self.schedule = schedule
    self.micro_batches = micro_batches
    self.graphdef, abstract_params = nnx.split(abstract_model(model_config))
    params = param_shardings(abstract_params, mesh_rules)
    replicated = NamedSharding(mesh_rules.mesh, PartitionSpec())
    abstract_opt_state = jax.eval_shape(optimizer.init, abstract_params)
    opt_state = optax.tree_map_params(optimizer, lambda _, sharding: sharding, abstract_opt_state,
                                      params, transform_non_params=lambda _: replicated)
    self.state_shardings = TrainState(step=replicated, params=params, opt_state=opt_state)
    self.batch_sharding = mesh_rules.sharding(TOKENS)
    self.init = jax.jit(self._init, out_shardings=self.state_shardings)
    self.step = jax.jit(self._step, in_shardings=(self.state_shardings, self.batch_sharding),
                        out_shardings=(self.state_shardings, replicated), donate_argnums=0)

  def _init(self, seed: jax.Array) -> TrainState:
    # Created inside jit with sharded outputs: no device ever holds the whole model.
    params = nnx.state(Llama(self.model_config, rngs=nnx.Rngs(jax.random.key(seed))), nnx.Param)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=self.optimizer.init(params))

  def loss_and_grads(self, params: nnx.State, batch: Batch) -> tuple[jax.Array, nnx.State]:
    """Traced under the mesh rules, so the activations are sharded as the rules say.

    The gradients are constrained to the parameters' shardings: the embedding table is gathered
    over `fsdp` before the lookup, so its gradient would otherwise arrive whole on every device,
    all-reduced (the GPU-compiled step showed it) instead of reduce-scattered.
    """
    with activation_sharding(self.mesh_rules):
      loss, grads = jax.value_and_grad(loss_fn)(params, self.graphdef, batch)
    return loss, jax.lax.with_sharding_constraint(grads, self.state_shardings.params)

  def accumulated_loss_and_grads(self, params: nnx.State,
                                 batch: Batch) -> tuple[jax.Array, nnx.State]:
    """Mean loss and gradients over `micro_batches` slices of the batch, one at a time.

    Micro-batch i takes rows i, i + m, i + 2m, ...: every device keeps its own rows, so the split
    moves no data. All micro-batches have as many tokens, so the mean equals the whole batch's.
    """
    m = self.micro_batches
    if m == 1:
      return self.loss_and_grads(params, batch)
    micro_sharding = self.mesh_rules.sharding((None, *TOKENS))

    def split(x):
      x = x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1)
      return jax.lax.with_sharding_constraint(x, micro_sharding)

    def add_micro_batch(total, micro_batch):
      return jax.tree.map(jnp.add, total, self.loss_and_grads(params, micro_batch)), None

    zeros = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    (loss, grads), _ = jax.lax.scan(add_micro_batch, zeros, jax.tree.map(split, batch))
    return loss / m, jax.tree.map(lambda g: g / m, grads)

  def _step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    loss, grads = self.accumulated_loss_and_grads(state.params, batch)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    updated = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state)
    # A non-finite loss or gradient leaves the state as it was: the update is skipped, and the
    # training loop counts it (and rolls back after too many in a row).
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "skipped": ~finite}
    if self.schedule is not None:
      metrics["lr"] = self.schedule(state.step)
    return new_state, metrics

  def jit_loss_and_grads(self) -> Callable[[nnx.State, Batch], tuple[jax.Array, nnx.State]]:
    """loss and gradients alone, compiled with the step's shardings (for tests and tools)."""
    return jax.jit(self.loss_and_grads,
                   in_shardings=(self.state_shardings.params, self.batch_sharding),
                   out_shardings=(NamedSharding(self.mesh_rules.mesh, PartitionSpec()),
                                  self.state_shardings.params))
