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
smallest of a few lengths (32, 48, 64, 96, 128, ... up to the model's context), with a fixed
number of rows, and go through the layers. Only the scored positions (every row's continuation,
gathered into one flat list padded to a multiple of 4 x rows) go through the output layer and the
reductions over the vocabulary, which for small models cost more than the layers: the target's
logit is gathered, the normaliser is a logsumexp, and a target is greedy where its logit is the
largest. So the layers compile once per padded length, the output layer once per number of
scored positions, not once per example. Rows are split over the mesh's batch axes (data, fsdp)
and the model over `tensor` by llama_jax.sharding's rules.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llama_jax.convert import LoadedModel, load_model
from llama_jax.eval.tasks import Request
from llama_jax.model import ModelConfig, abstract_model
from llama_jax.sharding import TOKENS, MeshRules, activation_sharding, batch_ways, host_rows
from llama_jax.tokenizer import Tokenizer

MIN_BUCKET = 32


def bucket_lengths(context_length: int) -> list[int]:
  """The padded lengths rows are scored (and prompts generated) at: powers of two from 32 and
  1.5 times each (32, 48, 64, 96, ...: at most a third of a row is padding), and the context
  length."""
  lengths, length = [], MIN_BUCKET
  while length < context_length:
    lengths += [n for n in (length, length * 3 // 2) if n < context_length]
    length *= 2
  return lengths + [context_length]


def scored_positions(rows: int, count: int) -> int:
  """How many positions a batch of `rows` scores when its continuations hold `count` tokens:
  `count` rounded up to a multiple of 4 x rows (few compiled shapes; rows split evenly)."""
  granule = 4 * rows
  return -(-count // granule) * granule


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


def _hidden(graphdef: nnx.GraphDef, params: nnx.State, inputs: jax.Array) -> jax.Array:
  return nnx.merge(graphdef, params).hidden(inputs)


def _gather(hidden: jax.Array, positions: jax.Array) -> jax.Array:
  """The residual stream at flat `positions` (row * length + column): [positions, dim]."""
  return hidden.reshape(-1, hidden.shape[-1])[positions]


def _score_hidden(graphdef: nnx.GraphDef, rows: int, params: nnx.State, hidden: jax.Array,
                  targets: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The log-probability of each target after the residual stream `hidden` [positions, dim], and
  whether its logit is the largest (the harness's argmax, but for exact ties)."""
  model = nnx.merge(graphdef, params)
  # As [rows, positions / rows, vocab], so that the batch axes split the logits as usual.
  logits = model.logits(hidden.reshape(rows, -1, hidden.shape[-1])).reshape(len(targets), -1)
  target_logits = jnp.take_along_axis(logits, targets[:, None], axis=-1)[:, 0]
  largest = jnp.max(logits, axis=-1)
  normaliser = largest + jnp.log(jnp.sum(jnp.exp(logits - largest[:, None]), axis=-1))
  return target_logits - normaliser, target_logits == largest


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
    rows, per_row = self.mesh_rules.sharding(TOKENS), self.mesh_rules.sharding(("batch",))
    flat = self.mesh_rules.sharding(("batch", None))
    params = jax.tree.map(lambda x: x.sharding, self.params)
    hidden = jax.jit(_hidden, static_argnums=0, in_shardings=(params, rows))
    gather = jax.jit(_gather, in_shardings=(None, per_row), out_shardings=flat)
    score = jax.jit(_score_hidden, static_argnums=(0, 1), in_shardings=(params, flat, per_row),
                    out_shardings=(per_row, per_row))

    def traced(inputs, positions, targets):
      with activation_sharding(self.mesh_rules):
        return score(self.graphdef, self.batch_size, self.params,
                     gather(hidden(self.graphdef, self.params, inputs), positions), targets)

    self._jitted = (hidden, gather, score)  # their compilation caches count the shapes compiled
    self._score = traced
    self._shardings = (rows, per_row, per_row)  # inputs, positions, targets
    self.compiled_shapes: set[tuple[int, int]] = set()  # (length, scored positions) used so far

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
    buckets = bucket_lengths(max_length)
    order = sorted(range(len(windows)), key=lambda i: len(windows[i][0]), reverse=True)
    results: list[tuple[float, bool] | None] = [None] * len(windows)
    for start in range(0, len(order), self.batch_size):
      chunk = order[start:start + self.batch_size]
      length = next(b for b in buckets if b >= len(windows[chunk[0]][0]))
      scored = scored_positions(self.batch_size, sum(windows[i][2] for i in chunk))
      inputs = np.zeros((self.batch_size, length), np.int32)
      positions = np.zeros((scored,), np.int32)
      targets = np.zeros((scored,), np.int32)
      owners = np.full((scored,), -1, np.int32)
      filled = 0
      for row, i in enumerate(chunk):
        inp, tgt, n_scored = windows[i]
        inputs[row, :len(inp)] = inp
        span = slice(filled, filled + n_scored)
        positions[span] = row * length + np.arange(len(tgt) - n_scored, len(tgt))
        targets[span] = tgt[len(tgt) - n_scored:]
        owners[span] = row
        filled += n_scored
      self.compiled_shapes.add((length, scored))
      log_probs, greedy = jax.device_get(self._score(*(
          host_rows(array, sharding) for array, sharding in zip(
              (inputs, positions, targets), self._shardings, strict=True))))
      # Summed here in float64 and in order: the same totals on any mesh or thread count.
      real = owners >= 0
      totals = np.bincount(owners[real], log_probs[real].astype(np.float64), len(chunk))
      misses = np.bincount(owners[real], ~greedy[real], len(chunk))
      for row, i in enumerate(chunk):
        results[i] = (float(totals[row]), bool(misses[row] == 0))
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
