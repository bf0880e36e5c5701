"""Training: the train state, the loss, and the sharded, jitted step `(state, batch) -> (state,
metrics)`.

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
from llama_jax.sharding import TOKENS, MeshRules, activation_sharding, param_shardings

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


def loss_fn(params: nnx.State, graphdef: nnx.GraphDef, batch: Batch) -> jax.Array:
  model = nnx.merge(graphdef, params)
  return cross_entropy(model(batch["inputs"]), batch["targets"])


class ShardedTraining:
  """The compiled functions of one training set-up: model, optimizer, mesh and rules."""

  def __init__(self, model_config: ModelConfig, optimizer: optax.GradientTransformation,
               mesh_rules: MeshRules):
    self.model_config = model_config
    self.optimizer = optimizer
    self.mesh_rules = mesh_rules
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
    """Traced under the mesh rules, so the activations are sharded as the rules say."""
    with activation_sharding(self.mesh_rules):
      return jax.value_and_grad(loss_fn)(params, self.graphdef, batch)

  def _step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    loss, grads = self.loss_and_grads(state.params, batch)
    updates, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def jit_loss_and_grads(self) -> Callable[[nnx.State, Batch], tuple[jax.Array, nnx.State]]:
    """loss and gradients alone, compiled with the step's shardings (for tests and tools)."""
    return jax.jit(self.loss_and_grads,
                   in_shardings=(self.state_shardings.params, self.batch_sharding),
                   out_shardings=(NamedSharding(self.mesh_rules.mesh, PartitionSpec()),
                                  self.state_shardings.params))
