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

Continuations of one context share a row: the context's tokens once, then each continuation,
which sees the context and itself but not the others (`Llama.hidden`'s segments), at the
positions it would have alone; multiple-choice items score 2 to 5 continuations of a context, and
few-shot contexts are long. A pair cut on the left to fit the model's context gets a row of its
own. Rows are sorted by length and padded (right, so causal attention never sees the padding) to
the smallest of a few lengths (32, 48, 64, 96, 128, ... up to the model's context), with a fixed
number of rows, and go through the layers. Only the scored positions (every continuation's,
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

from llama_jax.eval.likelihood import Request
from llama_jax.inference import InferenceModel, bucket_lengths, load_model
from llama_jax.sharding import TOKENS, activation_sharding, host_rows
from llama_jax.tokenizer import Tokenizer


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


@dataclasses.dataclass
class _Row:
  """One row of the model's input: a context, then continuations of it, each scored."""

  tokens: list[int]
  positions: list[int]  # each token's position in its own context + continuation
  segments: list[int]  # 0: the context; i: the i-th continuation
  scored: list[tuple[int, list[int], Sequence[int]]]  # (pair, predicting columns, targets)


def _row(context: Sequence[int], continuations: Sequence[tuple[int, Sequence[int]]]) -> _Row:
  """A row of `context` and the (pair, tokens) `continuations` after it, each seeing the context
  and itself. The last token predicts nothing and is left out."""
  row = _Row(list(context), list(range(len(context))), [0] * len(context), [])
  for segment, (pair, continuation) in enumerate(continuations, 1):
    start = len(row.tokens)
    predicting = [len(context) - 1, *range(start, start + len(continuation) - 1)]
    row.scored.append((pair, predicting, continuation))
    row.tokens += continuation
    row.positions += range(len(context), len(context) + len(continuation))
    row.segments += [segment] * len(continuation)
  del row.tokens[-1], row.positions[-1], row.segments[-1]
  return row


def pack_rows(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], max_length: int) -> list[_Row]:
  """The rows that score `pairs` (context tokens, continuation tokens) as lm-evaluation-harness
  does, continuations of the same context sharing rows of at most `max_length` tokens."""
  rows, by_context = [], {}
  for pair, (context, continuation) in enumerate(pairs):
    if not 0 < len(continuation) <= max_length:
      raise ValueError(f"a continuation of {len(continuation)} tokens cannot be scored by a "
                       f"model of context {max_length} (1 to {max_length} tokens)")
    if not context:
      raise ValueError("an empty context: the first token needs one to be predicted from (BOS)")
    if len(context) + len(continuation) - 1 > max_length:
      # The harness's cut: the model reads (context + continuation)[-(max_length + 1):][:-1].
      tokens = (list(context) + list(continuation))[-(max_length + 1):]
      rows.append(_row(tokens[:-len(continuation)], [(pair, continuation)]))
    else:
      by_context.setdefault(tuple(context), []).append(pair)
  for context, members in by_context.items():
    shared, length = [], len(context)
    for pair in members:
      continuation = pairs[pair][1]
      if shared and length + len(continuation) - 1 > max_length:
        rows.append(_row(context, shared))
        shared, length = [], len(context)
      shared.append((pair, continuation))
      length += len(continuation)
    rows.append(_row(context, shared))
  return rows


def _hidden(graphdef: nnx.GraphDef, params: nnx.State, inputs: jax.Array, positions: jax.Array,
            segments: jax.Array) -> jax.Array:
  return nnx.merge(graphdef, params).hidden(inputs, positions, segments)


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


class Scorer(InferenceModel):
  """A model, its tokenizer and a mesh: log-likelihoods of (context, continuation) pairs."""

  def __post_init__(self):
    super().__post_init__()
    rows, per_row = self.mesh_rules.sharding(TOKENS), self.mesh_rules.sharding(("batch",))
    flat = self.mesh_rules.sharding(("batch", None))
    params = jax.tree.map(lambda x: x.sharding, self.params)
    hidden = jax.jit(_hidden, static_argnums=0, in_shardings=(params, rows, rows, rows))
    gather = jax.jit(_gather, in_shardings=(None, per_row), out_shardings=flat)
    score = jax.jit(_score_hidden, static_argnums=(0, 1), in_shardings=(params, flat, per_row),
                    out_shardings=(per_row, per_row))

    def traced(inputs, positions, segments, flat_positions, targets):
      with activation_sharding(self.mesh_rules):
        states = hidden(self.graphdef, self.params, inputs, positions, segments)
        return score(self.graphdef, self.batch_size, self.params,
                     gather(states, flat_positions), targets)

    self._jitted = (hidden, gather, score)  # their compilation caches count the shapes compiled
    self._score = traced
    # inputs, positions, segments, the flat positions scored, their targets
    self._shardings = (rows, rows, rows, per_row, per_row)
    self.compiled_shapes: set[tuple[int, int]] = set()  # (length, scored positions) used so far

  @property
  def max_length(self) -> int:
    return self.model_config.context_length

  def loglikelihood_tokens(
      self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]],
      on_done: Callable[[int], None] | None = None) -> list[tuple[float, bool]]:
    """(log P(continuation | context), greedy) for token pairs; `on_done(i)` after pair i."""
    rows = pack_rows(pairs, self.max_length)
    buckets = bucket_lengths(self.max_length)
    rows.sort(key=lambda row: len(row.tokens), reverse=True)
    totals, misses = np.zeros(len(pairs), np.float64), np.zeros(len(pairs), np.int64)
    for start in range(0, len(rows), self.batch_size):
      chunk = rows[start:start + self.batch_size]
      length = next(b for b in buckets if b >= len(chunk[0].tokens))
      scored = scored_positions(
          self.batch_size, sum(len(targets) for row in chunk for _, _, targets in row.scored))
      inputs = np.zeros((self.batch_size, length), np.int32)
      positions = np.zeros((self.batch_size, length), np.int32)
      segments = np.full((self.batch_size, length), -1, np.int32)  # padding: a segment apart
      flat_positions = np.zeros((scored,), np.int32)
      targets = np.zeros((scored,), np.int32)
      owners = np.full((scored,), -1, np.int64)
      filled = 0
      for r, row in enumerate(chunk):
        columns = slice(0, len(row.tokens))
        inputs[r, columns], positions[r, columns], segments[r, columns] = (
            row.tokens, row.positions, row.segments)
        for pair, predicting, pair_targets in row.scored:
          span = slice(filled, filled + len(pair_targets))
          flat_positions[span] = r * length + np.asarray(predicting)
          targets[span], owners[span] = pair_targets, pair
          filled += len(pair_targets)
      self.compiled_shapes.add((length, scored))
      log_probs, greedy = jax.device_get(self._score(*(
          host_rows(array, sharding) for array, sharding in zip(
              (inputs, positions, segments, flat_positions, targets), self._shardings,
              strict=True))))
      # Summed here in float64 and in order: the same totals on any mesh or thread count.
      real = owners >= 0
      np.add.at(totals, owners[real], log_probs[real].astype(np.float64))
      np.add.at(misses, owners[real], ~greedy[real])
      if on_done:
        for row in chunk:
          for pair, _, _ in row.scored:
            on_done(pair)
    return [(float(total), bool(missed == 0)) for total, missed in zip(totals, misses, strict=True)]

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
