"""`python -m llama_jax.generate --ckpt=DIR --prompt=TEXT [--max_new_tokens --temperature --top_p
--top_k --num_samples --stop --seed]`: completions of prompts, printed (and written as JSONL)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
from absl import app, flags

from llama_jax import distributed
from llama_jax.config import enable_compilation_cache
from llama_jax.generate import GenerationSettings, Generator
from llama_jax.inference import define_model_flags
from llama_jax.jsonl import open_text, read_jsonl

# --- command line ----------------------------------------------------------------------------

_LOAD_MODEL = define_model_flags()
_PROMPT = flags.DEFINE_multi_string("prompt", [], "a prompt (repeat the flag for several)")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "a JSONL file of {\"prompt\": ...} "
                                    "lines, or a text file with one prompt per line")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 128, "tokens to generate at most",
                                       lower_bound=1)
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "0 decodes greedily", lower_bound=0)
_TOP_P = flags.DEFINE_float("top_p", 1.0, "nucleus sampling mass (1: off)")
_TOP_K = flags.DEFINE_integer("top_k", 0, "sample among the k likeliest tokens (0: off)",
                              lower_bound=0)
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1, "completions per prompt", lower_bound=1)
_STOP = flags.DEFINE_multi_string("stop", [], "end a completion before this string (repeatable)")
_SEED = flags.DEFINE_integer("seed", 0, "sampling seed")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "rows per model call", lower_bound=1)
_OUTPUT = flags.DEFINE_string("output", None, "also write {prompt, completions} JSONL here")


def _read_prompts(path: Path) -> list[str]:
  if path.suffix != ".jsonl":
    with open_text(path) as f:
      return [line.rstrip("\n") for line in f if line.strip()]
  prompts = []
  for where, record in read_jsonl(path):
    if not isinstance(record.get("prompt"), str):
      raise ValueError(f"{where}: expected an object with a string field \"prompt\"")
    prompts.append(record["prompt"])
  return prompts


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  enable_compilation_cache()
  try:
    prompts = list(_PROMPT.value)
    if _PROMPTS_FILE.value:
      prompts += _read_prompts(Path(_PROMPTS_FILE.value))
    if not prompts:
      raise ValueError("give --prompt=TEXT (repeatable) or --prompts_file=FILE")
    settings = GenerationSettings(_MAX_NEW_TOKENS.value, _TEMPERATURE.value, _TOP_P.value,
                                  _TOP_K.value, _NUM_SAMPLES.value, tuple(_STOP.value))
    distributed.initialize_from_flags()
    generator = Generator.from_loaded(_LOAD_MODEL(), _BATCH_SIZE.value)
  except (ValueError, FileNotFoundError) as error:
    raise app.UsageError(str(error)) from None
  completions = generator.generate(prompts, settings, _SEED.value,
                                   progress=jax.process_index() == 0)
  if jax.process_index() != 0:
    return
  for prompt, texts in zip(prompts, completions, strict=True):
    for text in texts:
      print(f"{prompt}\033[1m{text}\033[0m" if sys.stdout.isatty() else prompt + text)
      print("-" * 40)
  if generator.truncated_prompts:
    print(f"{generator.truncated_prompts} prompt(s) were cut on the left to fit the context")
  if _OUTPUT.value:
    with open(_OUTPUT.value, "w") as f:
      for prompt, texts in zip(prompts, completions, strict=True):
        f.write(json.dumps({"prompt": prompt, "completions": texts}) + "\n")
    print(f"completions written to {_OUTPUT.value}")


if __name__ == "__main__":
  app.run(main)
