"""Generation speed, KV cache beside recomputation: python -m benchmarks.generate
    [--config=configs/tiny.py] [--batch_sizes=1,8] [--prompt_length=64] [--new_tokens=64]
    [--dtype=bfloat16] [--mesh=data=1,fsdp=-1,tensor=1]

For each batch size, a model of the config's shape with random weights continues random prompts
greedily, three ways, each timed after a warm-up run that compiles:
  prefill     llama_jax.generate with one new token: the prompt through the model into the cache;
  kv_cache    llama_jax.generate with --new_tokens new tokens (prefill, then one cached step each);
  recompute   the whole sequence through the model again for every new token (right-padded to
              prompt + new tokens: one compilation), the way without a cache.
Prints one JSON object per measurement: seconds and generated tokens per second. EOS never ends
a row (no token plays it), so every run generates the same number of tokens.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from llama_jax.config import load_config_file
from llama_jax.generate import GenerationSettings, Generator
from llama_jax.model import Llama, ModelConfig
from llama_jax.sharding import MeshRules, logical_rules, make_mesh, param_shardings, parse_mesh


class _NoEos:
  """A tokenizer stand-in: no EOS, and nothing to decode (no stop sequences are given)."""

  eos_id = -1

  @staticmethod
  def decode(ids) -> str:
    return ""


def _timed(fn) -> float:
  fn()  # compiles
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _recompute(model: Llama, prompts: np.ndarray, new_tokens: int) -> None:
  batch, length = prompts.shape
  tokens = np.zeros((batch, length + new_tokens), np.int32)
  tokens[:, :length] = prompts
  tokens = jnp.asarray(tokens)
  forward = nnx.jit(lambda model, tokens, position: jnp.argmax(
      jax.lax.dynamic_index_in_dim(model(tokens), position, axis=1, keepdims=False), axis=-1))
  for position in range(length - 1, length + new_tokens - 1):
    token = forward(model, tokens, position)
    tokens = tokens.at[:, position + 1].set(token)
  jax.block_until_ready(tokens)


def _measure(method: str, model: Llama, params: nnx.State, rules: MeshRules, batch: int,
             args: argparse.Namespace) -> tuple[int, float]:
  """(new tokens per row, seconds) of one timed run after a warm-up run."""
  config = model.config
  prompts = np.random.default_rng(0).integers(3, config.vocab_size, (batch, args.prompt_length),
                                              np.int32)
  if method == "recompute":
    return args.new_tokens, _timed(lambda: _recompute(model, prompts, args.new_tokens))
  new_tokens = 1 if method == "prefill" else args.new_tokens
  generator = Generator(config, params, _NoEos(), rules, batch_size=batch)
  return new_tokens, _timed(lambda: generator.generate_tokens(
      prompts.tolist(), GenerationSettings(new_tokens)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/tiny.py")
  parser.add_argument("--batch_sizes", default="1,8")
  parser.add_argument("--prompt_length", type=int, default=64)
  parser.add_argument("--new_tokens", type=int, default=64)
  parser.add_argument("--dtype", default="bfloat16")
  parser.add_argument("--mesh", default="data=1,fsdp=-1,tensor=1")
  args = parser.parse_args()
  config = dataclasses.replace(ModelConfig.from_dict(load_config_file(args.config).model),
                               dtype=args.dtype, remat="none")
  if args.prompt_length + args.new_tokens > config.context_length:
    parser.error(f"--prompt_length + --new_tokens exceed the context of {config.context_length}")
  model = Llama(config, rngs=nnx.Rngs(0))
  rules = MeshRules(make_mesh(parse_mesh(args.mesh)), logical_rules(sequence_parallel=False))
  params = nnx.state(model, nnx.Param)
  params = jax.device_put(params, param_shardings(params, rules))
  for batch in map(int, args.batch_sizes.split(",")):
    for method in ("prefill", "kv_cache", "recompute"):
      new_tokens, seconds = _measure(method, model, params, rules, batch, args)
      print(json.dumps({
          "benchmark": "generate", "method": method, "batch": batch,
          "prompt_length": args.prompt_length, "new_tokens": new_tokens,
          "seconds": round(seconds, 4), "tokens_per_s": round(batch * new_tokens / seconds, 1),
          "config": args.config, "dtype": args.dtype, "mesh": dict(rules.mesh.shape),
          "backend": jax.default_backend(), "device": jax.devices()[0].device_kind}), flush=True)

if __name__ == "__main__":
  main()
