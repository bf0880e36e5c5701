"""Sampling from a LLaMA with a KV cache (the command line: llama_jax/generate/__main__.py).

A batch of prompts is left-padded to a common length, prefilled in one call (each row's keys and
values go into the cache, its positions counted from its own first token), then extended one
token per step, each step reading the cache instead of recomputing the prefix. Every shape is
static: prompts are padded to one of a few lengths (as scoring's), and the decode loop runs in
jitted chunks of `CHUNK` steps; between chunks the host looks for EOS and stop sequences and ends
the batch once every row has finished. Rows are split over the mesh's batch axes and the model
over `tensor`, as in evaluation.

Decoding is greedy at temperature 0, else sampling from softmax(logits / temperature) restricted
to the top-k tokens and to the smallest set whose probability reaches top-p. Each row's random
stream depends only on the seed, the row's prompt index and sample number, and the step, so a
sample does not change with the batch it is drawn in.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from llama_jax.inference import InferenceModel, bucket_lengths, load_model
from llama_jax.model import KVCache, empty_cache
from llama_jax.sharding import KV_CACHE, TOKENS, activation_sharding, host_rows
from llama_jax.tokenizer import Tokenizer

CHUNK = 16  # decode steps per jitted call: one host check for EOS / stop sequences per chunk


@dataclasses.dataclass(frozen=True)
class GenerationSettings:
  """How to continue each prompt."""

  max_new_tokens: int = 256
  temperature: float = 0.0  # 0: greedy
  top_p: float = 1.0  # 1: off
  top_k: int = 0  # 0: off
  num_samples: int = 1  # completions per prompt
  stop: tuple[str, ...] = ()  # a completion ends before the first of these (and at EOS)

  def __post_init__(self):
    problems = []
    if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
      problems.append(f"max_new_tokens={self.max_new_tokens!r} must be a positive integer")
    if self.temperature < 0:
      problems.append(f"temperature={self.temperature} must be >= 0 (0 is greedy)")
    if not 0 < self.top_p <= 1:
      problems.append(f"top_p={self.top_p} must be in (0, 1] (1 is off)")
    if self.top_k < 0:
      problems.append(f"top_k={self.top_k} must be >= 0 (0 is off)")
    if self.num_samples < 1:
      problems.append(f"num_samples={self.num_samples} must be >= 1")
    if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
      problems.append(f"stop={self.stop!r} must be a tuple of non-empty strings")
    if problems:
      raise ValueError("generation settings: " + "; ".join(problems))


class Sampling(NamedTuple):
  """What the jitted steps depend on (the rest of GenerationSettings is the host's business)."""

  temperature: float
  top_p: float
  top_k: int


def sample_tokens(logits: jax.Array, keys: jax.Array, temperature: float, top_p: float,
                  top_k: int) -> jax.Array:
  """Next tokens [batch] from logits [batch, vocab] float32, one PRNG key per row; top-k first,
  then top-p over what is left (as transformers' processors)."""
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = logits / temperature
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1:
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(ordered, axis=-1)
    # A token is kept when the tokens more likely than it hold less than top_p: the smallest set
    # reaching top_p, and always the most likely token.
    kept = (jnp.cumsum(probs, axis=-1) - probs) < top_p
    threshold = jnp.min(jnp.where(kept, ordered, jnp.inf), axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)


def _row_keys(seed: jax.Array, row_ids: jax.Array, step: jax.Array) -> jax.Array:
  base = jax.random.key(seed)
  return jax.vmap(lambda row: jax.random.fold_in(jax.random.fold_in(base, row), step))(row_ids)


def _prefill(graphdef: nnx.GraphDef, sampling: Sampling, slots: int, params: nnx.State,
             tokens: jax.Array, padding: jax.Array, row_ids: jax.Array,
             seed: jax.Array) -> tuple[jax.Array, KVCache]:
  """The prompts into a fresh cache of `slots` tokens; the first generated token per row."""
  model = nnx.merge(graphdef, params)
  cache = empty_cache(model.config, tokens.shape[0], slots)
  logits, cache = model.decode(tokens, cache, jnp.int32(0), padding)
  first = sample_tokens(logits, _row_keys(seed, row_ids, jnp.int32(0)), *sampling)
  return first, cache


def _decode_chunk(graphdef: nnx.GraphDef, sampling: Sampling, params: nnx.State,
                  cache: KVCache, token: jax.Array, index: jax.Array, padding: jax.Array,
                  row_ids: jax.Array, seed: jax.Array,
                  step: jax.Array) -> tuple[jax.Array, KVCache]:
  """CHUNK decode steps: `token` (generated, not yet read) goes into slot `index`, and so on.

  Returns the CHUNK tokens sampled [batch, CHUNK] and the cache.
  """
  model = nnx.merge(graphdef, params)

  def one_step(carry, offset):
    token, cache = carry
    logits, cache = model.decode(token[:, None], cache, index + offset, padding)
    token = sample_tokens(logits, _row_keys(seed, row_ids, step + offset), *sampling)
    return (token, cache), token

  (_, cache), tokens = jax.lax.scan(one_step, (token, cache), jnp.arange(CHUNK))
  return tokens.T, cache


def _cut(text: str, stop: Sequence[str]) -> tuple[str, bool]:
  """`text` up to the first stop sequence, and whether one was found."""
  ends = [i for i in (text.find(s) for s in stop) if i >= 0]
  return (text[:min(ends)], True) if ends else (text, False)


@dataclasses.dataclass
class Completion:
  """One generated continuation of a prompt."""

  text: str  # cut before the first stop sequence
  tokens: list[int]  # what the model generated, up to EOS or the stop sequence's last token
  finish: str  # "eos", "stop" (a stop sequence) or "length" (max_new_tokens reached)


class _Row:
  """One row of a batch on the host: its prompt and what was generated after it."""

  def __init__(self, tokenizer: Tokenizer, prompt: list[int], generated: list[int]):
    self.tokenizer, self.prompt, self.generated = tokenizer, prompt, generated
    self.prompt_text = tokenizer.decode(prompt)

  def text(self, generated: list[int]) -> str:
    # SentencePiece drops the leading space of the first piece it decodes, so the continuation
    # alone would lose a space (or an indentation level of code): decode it after its prompt.
    whole = self.tokenizer.decode(self.prompt + generated)
    return (whole[len(self.prompt_text):] if whole.startswith(self.prompt_text)
            else self.tokenizer.decode(generated))

  def finished(self, settings: GenerationSettings) -> bool:
    return (len(self.generated) >= settings.max_new_tokens
            or self.tokenizer.eos_id in self.generated
            or _cut(self.text(self.generated), settings.stop)[1])

  def completion(self, settings: GenerationSettings) -> Completion:
    generated = self.generated[:settings.max_new_tokens]
    finish = "length"
    if self.tokenizer.eos_id in generated:
      generated, finish = generated[:generated.index(self.tokenizer.eos_id)], "eos"
    text, stopped = _cut(self.text(generated), settings.stop)
    if stopped:
      # The tokens up to the one that completed the stop sequence (the chunk ran past it): the
      # shortest prefix whose text holds a stop sequence, by bisection.
      low, high = 1, len(generated)
      while low < high:
        middle = (low + high) // 2
        if _cut(self.text(generated[:middle]), settings.stop)[1]:
          high = middle
        else:
          low = middle + 1
      finish, generated = "stop", generated[:low]
    return Completion(text, generated, finish)


@dataclasses.dataclass
class Generator(InferenceModel):
  """A model, its tokenizer and a mesh: continuations of prompts."""

  truncated_prompts: int = 0  # prompts cut on the left to leave room for max_new_tokens

  def __post_init__(self):
    super().__post_init__()
    rules = self.mesh_rules
    rows, cache = rules.sharding(TOKENS), rules.sharding(KV_CACHE)
    row = rules.sharding(TOKENS[:1])
    replicated = NamedSharding(rules.mesh, PartitionSpec())
    params = jax.tree.map(lambda x: x.sharding, self.params)
    cache = KVCache(cache, cache)
    self._prefill = jax.jit(_prefill, static_argnums=(0, 1, 2),
                            in_shardings=(params, rows, row, row, replicated),
                            out_shardings=(row, cache))
    self._decode = jax.jit(_decode_chunk, static_argnums=(0, 1),
                           in_shardings=(params, cache, row, replicated, row, row, replicated,
                                         replicated),
                           out_shardings=(rows, cache), donate_argnums=(3,))

  def _call(self, function: Callable, *args):
    with activation_sharding(self.mesh_rules):
      return function(self.graphdef, *args)

  def generate_tokens(self, prompts: Sequence[Sequence[int]], settings: GenerationSettings,
                      seed: int = 0, progress: bool = False) -> list[list[Completion]]:
    """`settings.num_samples` completions of each prompt (token ids, BOS included)."""
    limit = self.model_config.context_length - settings.max_new_tokens
    if limit < 1:
      raise ValueError(f"max_new_tokens={settings.max_new_tokens} leaves no room for a prompt in "
                       f"the model's context of {self.model_config.context_length} tokens")
    rows = []  # (prompt index, sample number, tokens)
    for p, prompt in enumerate(prompts):
      if not prompt:
        raise ValueError(f"prompt {p} is empty (give at least BOS)")
      if len(prompt) > limit:
        self.truncated_prompts += 1
        logging.warning("prompt %d has %d tokens; keeping its last %d (context %d - "
                        "max_new_tokens %d)", p, len(prompt), limit,
                        self.model_config.context_length, settings.max_new_tokens)
      rows += [(p, s, list(prompt)[-limit:]) for s in range(settings.num_samples)]
    order = sorted(range(len(rows)), key=lambda i: -len(rows[i][2]))
    results: list[list[Completion | None]] = [[None] * settings.num_samples for _ in prompts]
    bar = tqdm(total=len(rows), desc="generating", unit="sample", disable=not progress,
               dynamic_ncols=True)
    with bar:
      for start in range(0, len(order), self.batch_size):
        batch = [rows[i] for i in order[start:start + self.batch_size]]
        for (p, s, _), completion in zip(batch, self._generate_batch(batch, settings, seed,
                                                                     limit), strict=True):
          results[p][s] = completion
        bar.update(len(batch))
    return results

  def _generate_batch(self, batch: list[tuple[int, int, list[int]]], settings: GenerationSettings,
                      seed: int, limit: int) -> list[Completion]:
    # Prompts are padded to scoring's lengths (32, 48, 64, ...) up to `limit`: few compilations.
    length = next(b for b in bucket_lengths(limit) if b >= len(batch[0][2]))
    steps = -(-(settings.max_new_tokens - 1) // CHUNK) * CHUNK  # decode steps after the prefill
    tokens = np.zeros((self.batch_size, length), np.int32)
    padding = np.full((self.batch_size,), length, np.int32)  # unused rows: all padding
    row_ids = np.zeros((self.batch_size,), np.int32)
    for r, (p, s, prompt) in enumerate(batch):
      tokens[r, length - len(prompt):] = prompt
      padding[r] = length - len(prompt)
      row_ids[r] = p * settings.num_samples + s
    rules = self.mesh_rules
    tokens, padding, row_ids = (host_rows(a, rules.sharding(TOKENS[:a.ndim]))
                                for a in (tokens, padding, row_ids))
    seed = jnp.uint32(seed)
    sampling = Sampling(settings.temperature, settings.top_p, settings.top_k)
    token, cache = self._call(self._prefill, sampling, length + steps, self.params, tokens,
                              padding, row_ids, seed)
    rows = [_Row(self.tokenizer, prompt, [int(t)])
            for (_, _, prompt), t in zip(batch, jax.device_get(token), strict=False)]
    finished = [row.finished(settings) for row in rows]
    for step in range(1, settings.max_new_tokens, CHUNK):
      if all(finished):
        break
      chunk, cache = self._call(self._decode, sampling, self.params, cache, token,
                                jnp.int32(length + step - 1), padding, row_ids, seed,
                                jnp.int32(step))
      token = chunk[:, -1]
      for r, new in enumerate(jax.device_get(chunk)[:len(batch)]):
        if not finished[r]:
          rows[r].generated += [int(t) for t in new]
          finished[r] = rows[r].finished(settings)
    return [row.completion(settings) for row in rows]

  def generate(self, prompts: Sequence[str], settings: GenerationSettings, seed: int = 0,
               progress: bool = False) -> list[list[str]]:
    """`settings.num_samples` completions (text after the prompt, cut before a stop sequence)
    of each prompt, encoded with BOS."""
    encoded = self.tokenizer.encode_batch(prompts, bos=True)
    completions = self.generate_tokens(encoded, settings, seed, progress)
    return [[c.text for c in per_prompt] for per_prompt in completions]


def load_generator(ckpt: str | Path, *, batch_size: int = 16, **load_args) -> Generator:
  """A Generator for any checkpoint `llama_jax.inference.load_model` reads."""
  return Generator.from_loaded(load_model(ckpt, **load_args), batch_size)
