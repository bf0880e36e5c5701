"""Generation with a KV cache against full recomputation, transformers' generate, and itself on
meshes; sampling against the distribution it samples from."""

import functools
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from llama_jax.generate import GenerationSettings, Generator, load_generator, sample_tokens
from llama_jax.model import Llama, ModelConfig
from llama_jax.sharding import MeshRules, logical_rules, make_mesh, param_shardings
from llama_jax.testing.hf_reference import META_TOKENIZER
from llama_jax.tokenizer import Tokenizer

CONFIG = ModelConfig(vocab_size=32000, dim=64, n_layers=2, n_heads=4, ffn_dim=128,
                     context_length=128, dtype="float32", remat="none")
TEXTS = ["Hello world, this is", "A", "The quick brown fox jumps over the lazy dog, and then",
         "def add(a, b):\n    return", "Once upon a time " * 5]


@pytest.fixture(scope="module")
def tokenizer():
  return Tokenizer(META_TOKENIZER)


@pytest.fixture(scope="module")
def model():
  model = Llama(CONFIG, rngs=nnx.Rngs(0))
  # Larger weights than the 0.02 initialisation: peaked distributions, no near-ties in argmax.
  nnx.update(model, jax.tree.map(lambda p: p * 5, nnx.state(model, nnx.Param)))
  return model


def _generator(model, tokenizer, mesh=(1, -1, 1), batch_size=4, devices=None) -> Generator:
  rules = MeshRules(make_mesh(dict(zip(("data", "fsdp", "tensor"), mesh, strict=True)), devices),
                    logical_rules(sequence_parallel=False))
  params = nnx.state(model, nnx.Param)
  params = jax.device_put(params, param_shardings(params, rules))
  return Generator(model.config, params, tokenizer, rules, batch_size)


@functools.cache
def _forward(model):
  return nnx.jit(lambda model, tokens: model(tokens))


def _greedy_by_recomputation(model, prompt, max_new_tokens, eos_id):
  """The reference: the whole sequence through the model again for every new token (right-padded
  to the context length, which causal attention never lets earlier positions see: one
  compilation)."""
  tokens, new = list(prompt), []
  for _ in range(max_new_tokens):
    padded = np.zeros((1, CONFIG.context_length), np.int32)
    padded[0, :len(tokens)] = tokens
    token = int(jnp.argmax(_forward(model)(model, jnp.asarray(padded))[0, len(tokens) - 1]))
    if token == eos_id:
      break
    tokens.append(token)
    new.append(token)
  return new


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_greedy_equals_full_recomputation(model, tokenizer, batch_size):
  # Prompts of 2 to 22 tokens share a batch (left-padded to 32 slots) when batch_size > 1.
  prompts = [tokenizer.encode(text, bos=True) for text in TEXTS]
  generator = _generator(model, tokenizer, batch_size=batch_size)
  completions = generator.generate_tokens(prompts, GenerationSettings(max_new_tokens=21))
  for prompt, (completion,) in zip(prompts, completions, strict=True):
    assert completion.tokens == _greedy_by_recomputation(model, prompt, 21, tokenizer.eos_id)
    assert completion.finish == "length"


def test_prompt_longer_than_the_smallest_bucket(model, tokenizer):
  prompt = tokenizer.encode("one two three four five six seven eight " * 8, bos=True)
  assert 64 < len(prompt) < 128 - 10
  (completion,), = _generator(model, tokenizer).generate_tokens([prompt], GenerationSettings(10))
  assert completion.tokens == _greedy_by_recomputation(model, prompt, 10, tokenizer.eos_id)


class _EosAt:
  """Meta's tokenizer with another token playing EOS, so that a random model emits it."""

  def __init__(self, tokenizer, eos_id):
    self._tokenizer, self.eos_id = tokenizer, eos_id

  def __getattr__(self, name):
    return getattr(self._tokenizer, name)


def test_eos_ends_a_row_and_the_others_go_on(model, tokenizer):
  prompts = [tokenizer.encode(text, bos=True) for text in TEXTS[:3]]
  references = [_greedy_by_recomputation(model, p, 30, None) for p in prompts]
  eos = references[0][5]  # row 0's sixth token; the other rows may or may not produce it
  generator = _generator(model, _EosAt(tokenizer, eos), batch_size=3)
  completions = generator.generate_tokens(prompts, GenerationSettings(max_new_tokens=30))
  for reference, (completion,) in zip(references, completions, strict=True):
    expected = reference[:reference.index(eos)] if eos in reference else reference
    assert completion.tokens == expected
    assert completion.finish == ("eos" if eos in reference else "length")
  assert completions[0][0].tokens == references[0][:5]


def test_stop_sequences_cut_the_text_and_the_tokens(model, tokenizer):
  prompt = tokenizer.encode(TEXTS[2], bos=True)
  reference = _greedy_by_recomputation(model, prompt, 40, tokenizer.eos_id)
  full_text = tokenizer.decode(prompt + reference)[len(tokenizer.decode(prompt)):]
  stop = full_text[len(full_text) // 2:len(full_text) // 2 + 3]
  cut = full_text[:full_text.index(stop)]
  generator = _generator(model, tokenizer)
  settings = GenerationSettings(max_new_tokens=40, stop=("never appears §§", stop))
  (completion,), = generator.generate_tokens([prompt], settings)
  assert completion.finish == "stop"
  assert completion.text == cut
  # The tokens end with the one that completed the stop sequence.
  n = len(completion.tokens)
  assert completion.tokens == reference[:n]
  decode = lambda k: tokenizer.decode(prompt + reference[:k])  # noqa: E731
  assert stop in decode(n)[len(tokenizer.decode(prompt)):]
  assert stop not in decode(n - 1)[len(tokenizer.decode(prompt)):]
  # The text API keeps the leading space SentencePiece would drop when decoding alone.
  assert generator.generate([TEXTS[2]], settings) == [[cut]]


def test_sharded_generation_equals_one_device(model, tokenizer):
  prompts = [tokenizer.encode(text, bos=True) for text in TEXTS]
  settings = GenerationSettings(max_new_tokens=12, temperature=0.8, top_k=50, num_samples=2)
  single = _generator(model, tokenizer, mesh=(1, 1, 1), batch_size=4, devices=jax.devices()[:1])
  expected = [[c.tokens for c in row] for row in single.generate_tokens(prompts, settings, seed=3)]
  sharded = _generator(model, tokenizer, mesh=(2, 2, 2), batch_size=4)
  got = sharded.generate_tokens(prompts, settings, seed=3)
  assert [[c.tokens for c in row] for row in got] == expected


def test_samples_do_not_depend_on_the_batch(model, tokenizer):
  prompts = [tokenizer.encode(text, bos=True) for text in TEXTS[:2]]
  settings = GenerationSettings(max_new_tokens=6, temperature=1.0, top_p=0.9, num_samples=2)

  def tokens(batch_size, seed=0):
    rows = _generator(model, tokenizer, batch_size=batch_size).generate_tokens(prompts, settings,
                                                                               seed)
    return [[c.tokens for c in row] for row in rows]

  alone, together = tokens(1), tokens(8)
  assert alone == together
  assert alone[0][0] != alone[0][1]  # the two samples of a prompt differ
  assert tokens(8, seed=1) != together


@pytest.mark.parametrize("temperature,top_k,top_p", [
    (1.0, 0, 1.0), (0.5, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.8), (2.0, 4, 0.7),
    (1.5, 1, 1.0), (1.5, 0, 1e-6)])  # the last two: greedy
def test_sampling_frequencies_follow_the_truncated_distribution(temperature, top_k, top_p):
  logits = jnp.log(jnp.asarray([0.3, 0.25, 0.2, 0.1, 0.08, 0.07], jnp.float32))
  probs = np.asarray(jax.nn.softmax(logits / temperature))
  keep = np.ones(6, bool)
  if top_k:
    keep[top_k:] = False  # logits are sorted: the top k are the first k
  if top_p < 1:  # over what top-k leaves, renormalised (transformers' order)
    left = np.where(keep, probs, 0) / np.where(keep, probs, 0).sum()
    keep &= np.cumsum(left) - left < top_p
  expected = np.where(keep, probs, 0) / np.where(keep, probs, 0).sum()
  n = 40000
  keys = jax.random.split(jax.random.key(0), n)
  drawn = sample_tokens(jnp.tile(logits, (n, 1)), keys, temperature, top_p, top_k)
  frequencies = np.bincount(np.asarray(drawn), minlength=6) / n
  assert np.all(frequencies[~keep] == 0)
  # Four standard deviations of a binomial frequency at n = 40000: at most 0.01.
  assert np.max(np.abs(frequencies - expected)) < 4 * np.sqrt(0.25 / n)


def test_long_prompts_are_cut_on_the_left(model, tokenizer):
  prompt = tokenizer.encode("word " * 200, bos=True)
  generator = _generator(model, tokenizer)
  (completion,), = generator.generate_tokens([prompt], GenerationSettings(max_new_tokens=28))
  assert generator.truncated_prompts == 1
  assert completion.tokens == _greedy_by_recomputation(model, prompt[-100:], 28, tokenizer.eos_id)
  with pytest.raises(ValueError, match="leaves no room"):
    generator.generate_tokens([prompt], GenerationSettings(max_new_tokens=128))


@pytest.mark.parametrize("changes,message", [
    ({"max_new_tokens": 0}, "max_new_tokens"), ({"temperature": -1.0}, "temperature"),
    ({"top_p": 0.0}, "top_p"), ({"top_k": -2}, "top_k"), ({"num_samples": 0}, "num_samples"),
    ({"stop": ("",)}, "stop")])
def test_bad_settings_are_named(changes, message):
  with pytest.raises(ValueError, match=message):
    GenerationSettings(**{"max_new_tokens": 4, **changes})


def test_greedy_equals_transformers_generate(hf_llama_dir):
  from transformers import LlamaForCausalLM

  generator = load_generator(hf_llama_dir, dtype="float32", batch_size=4)
  tokenizer = generator.tokenizer
  reference_model = LlamaForCausalLM.from_pretrained(hf_llama_dir, dtype=torch.float32).eval()
  prompts = [tokenizer.encode(text, bos=True) for text in TEXTS]
  completions = generator.generate_tokens(prompts, GenerationSettings(max_new_tokens=16))
  for prompt, (completion,) in zip(prompts, completions, strict=True):
    with torch.no_grad():
      output = reference_model.generate(torch.tensor([prompt]), max_new_tokens=16,
                                        do_sample=False, eos_token_id=tokenizer.eos_id,
                                        pad_token_id=0)
    expected = output[0, len(prompt):].tolist()
    if tokenizer.eos_id in expected:
      expected = expected[:expected.index(tokenizer.eos_id)]
    assert completion.tokens == expected


def test_command_line(hf_llama_dir, tmp_path):
  prompts = tmp_path / "prompts.jsonl"
  prompts.write_text(json.dumps({"prompt": "The capital of France is"}) + "\n")
  output = tmp_path / "out.jsonl"
  run = subprocess.run(
      [sys.executable, "-m", "llama_jax.generate", f"--ckpt={hf_llama_dir}", "--prompt=Hello",
       f"--prompts_file={prompts}", "--max_new_tokens=5", "--temperature=0.7", "--top_p=0.9",
       "--num_samples=2", "--seed=1", "--dtype=float32", f"--output={output}"],
      capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr
  lines = [json.loads(line) for line in output.read_text().splitlines()]
  assert [line["prompt"] for line in lines] == ["Hello", "The capital of France is"]
  assert all(len(line["completions"]) == 2 for line in lines)
  assert "The capital of France is" in run.stdout
  bad = subprocess.run([sys.executable, "-m", "llama_jax.generate", f"--ckpt={hf_llama_dir}"],
                       capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "--prompt" in bad.stderr
