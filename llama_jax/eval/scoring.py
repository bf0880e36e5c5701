"""Log-likelihoods of continuations under a model: jitted, sharded, in a few fixed shapes.

`Scorer.loglikelihood` follows lm-evaluation-harness's `TemplateLM.loglikelihood` and
`HFLM._loglikelihood_tokens` (0.4.13) exactly, so per-example numbers match the harness's:
  - trailing spaces of the context move to the continuation; context + continuation is encoded
    whole (with BOS) and split where the context's own encoding ends, so the continuation's tokens
    are the ones the model reads in the full text;
  - an empty context becomes BOS alone;
  - the model reads (context + continuation)[-(L + 1):][:-1] and the continuation's tokens are
    scored at the last positions: their summed log-probability, and whether every one is the
    argmax (greedy).

Rows are sorted by length and padded (right, so causal attention never sees the padding) to the
smallest of a few lengths (powers of two up to the model's context), with a fixed number of rows:
the scoring function compiles once per length used, not once per example. Rows are split over the
mesh's batch axes (data, fsdp) and the model over `tensor` by llama_jax.sharding's rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from llama_jax.convert import LoadedModel, load_model
from llama_jax.eval.tasks import Request
from llama_jax.model import ModelConfig, abstract_model
from llama_jax.sharding import TOKENS, MeshRules, activation_sharding, batch_ways, host_rows
from llama_jax.tokenizer import Tokenizer

MIN_BUCKET = 32


def bucket_lengths(context_length: int) -> list[int]:
  """The padded lengths rows are scored at: powers of two from 32, and the context length."""
  lengths, length = [], MIN_BUCKET
  while length < context_length:
    lengths.append(length)
    length *= 2
  return lengths + [context_length]


def encode_pair(tokenizer: Tokenizer, context: str,
                continuation: str) -> tuple[list[int], list[int]]:
  """(context tokens, continuation tokens) as lm-evaluation-harness splits them."""
  if not context:
    return [tokenizer.bos_id], tokenizer.encode(continuation)
  spaces = len(context) - len(context.rstrip())
  if spaces:
    context, continuation = context[:-spaces], context[-spaces:] + continuation
  whole = tokenizer.encode(context + continuation, bos=True)
  context_tokens = tokenizer.encode(context, bos=True)
  return context_tokens, whole[len(context_tokens):]


def _score_rows(graphdef: nnx.GraphDef, params: nnx.State, inputs: jax.Array, targets: jax.Array,
                scored: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Summed log-probability of the `scored` targets per row, and whether each is the argmax."""
  logits = nnx.merge(graphdef, params)(inputs)  # float32
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  # One-hot pick (as train.cross_entropy): with the vocabulary split over `tensor`, only
  # [rows, length] partial sums cross devices.
  is_target = jax.nn.one_hot(targets, logits.shape[-1], dtype=jnp.bool_)
  target_log_probs = jnp.sum(jnp.where(is_target, log_probs, 0.0), axis=-1)
  greedy = jnp.all(jnp.where(scored, jnp.argmax(logits, axis=-1) == targets, True), axis=-1)
  return jnp.sum(jnp.where(scored, target_log_probs, 0.0), axis=-1), greedy


@dataclasses.dataclass
class Scorer:
  """A model, its tokenizer and a mesh: log-likelihoods of (context, continuation) pairs."""

  model_config: ModelConfig
  params: nnx.State  # placed with the shardings of `mesh_rules`
  tokenizer: Tokenizer
  mesh_rules: MeshRules
  batch_size: int = 16  # rows per call; rounded up to a multiple of the mesh's batch ways
  description: str = ""  # what was loaded, for results.json

  def __post_init__(self):
    mesh = self.mesh_rules.mesh
    ways = batch_ways(mesh)
    self.batch_size = -(-self.batch_size // ways) * ways
    self.graphdef = nnx.graphdef(abstract_model(self.model_config))
    rows = self.mesh_rules.sharding(TOKENS)
    replicated = NamedSharding(mesh, PartitionSpec())
    score = jax.jit(_score_rows, static_argnums=0, in_shardings=(
        jax.tree.map(lambda x: x.sharding, self.params), rows, rows, rows),
        out_shardings=(replicated, replicated))

    def traced(*args):
      with activation_sharding(self.mesh_rules):
        return score(self.graphdef, *args)

    self._jitted = score  # its compilation cache counts the shapes compiled
    self._score = traced
    self._row_sharding = rows
    self.compiled_lengths: set[int] = set()  # the padded lengths used so far

  @classmethod
  def from_loaded(cls, loaded: LoadedModel, batch_size: int = 16) -> Scorer:
    return cls(loaded.model_config, loaded.params, loaded.tokenizer, loaded.mesh_rules,
               batch_size, loaded.description)

  @property
  def max_length(self) -> int:
    return self.model_config.context_length

  def loglikelihood_tokens(
      self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
      on_done: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
    """(log P(continuation | context), greedy) for token pairs; `on_done(i)` after pair i."""
    max_length = self.max_length
    windows = []
    for context, continuation in pairs:
      if not 0 < len(continuation) <= max_length:
        raise ValueError(f"a continuation of {len(continuation)} tokens cannot be scored by a "
                         f"model of context {max_length} (1 to {max_length} tokens)")
      tokens = (list(context) + list(continuation))[-(max_length + 1):]
      windows.append((tokens[:-1], tokens[1:], len(continuation)))
    order = sorted(range(len(windows)), key=lambda i: -len(windows[i][0]))
    buckets = bucket_lengths(max_length)
    results: list[tuple[float, bool] | None] = [None] * len(windows)
    for start in range(0, len(order), self.batch_size):
      chunk = order[start:start + self.batch_size]
      length = next(b for b in buckets if b >= len(windows[chunk[0]][0]))
      inputs = np.zeros((self.batch_size, length), np.int32)
      targets = np.zeros((self.batch_size, length), np.int32)
      scored = np.zeros((self.batch_size, length), np.bool_)
      for row, i in enumerate(chunk):
        inp, tgt, n_scored = windows[i]
        inputs[row, :len(inp)] = inp
        targets[row, :len(tgt)] = tgt
        scored[row, len(tgt) - n_scored:len(tgt)] = True
      self.compiled_lengths.add(length)
      lls, greedy = jax.device_get(self._score(self.params, *(
          host_rows(rows, self._row_sharding) for rows in (inputs, targets, scored))))
      for row, i in enumerate(chunk):
        results[i] = (float(lls[row]), bool(greedy[row]))
        if on_done:
          on_done(i)
    return results

  def loglikelihood(self, requests: Sequence[Request],
                    on_done: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
    """(log P(continuation | context), greedy) for each request, as the harness computes it.

    Identical requests (e.g. every option after "Answer:" for the paper's normalization) are
    scored once.
    """
    positions: dict[Request, list[int]] = {}
    for i, request in enumerate(requests):
      positions.setdefault(request, []).append(i)
    unique = list(positions)

    def done(u: int) -> None:
      for i in positions[unique[u]]:
        on_done(i)

    pairs = [encode_pair(self.tokenizer, r.context, r.continuation) for r in unique]
    scores = self.loglikelihood_tokens(pairs, done if on_done else None)
    results: list[tuple[float, bool]] = [None] * len(requests)
    for request, score in zip(unique, scores, strict=True):
      for i in positions[request]:
        results[i] = score
    return results


# --- loading ---------------------------------------------------------------------------------


def load_scorer(ckpt: str | Path, *, tokenizer: str | Path | None = None, dtype: str | None = None,
                mesh_config: dict | None = None, batch_size: int = 16,
                devices: Sequence[jax.Device] | None = None) -> Scorer:
  """A Scorer for a Hugging Face LLaMA directory or a llama_jax training run (its latest or a
  given checkpoint), with the parameters sharded over the mesh (default: FSDP over every device).
  """
  return Scorer.from_loaded(load_model(ckpt, tokenizer=tokenizer, dtype=dtype,
                                       mesh_config=mesh_config, devices=devices), batch_size)
