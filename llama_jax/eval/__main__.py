"""`python -m llama_jax.eval --ckpt=DIR --tasks=LIST --data_dir=DIR --output=results.json`.

Likelihood tasks (llama_jax.eval.likelihood) and generative ones (llama_jax.eval.generative) can
be mixed in one run; the checkpoint is loaded once.
"""

from __future__ import annotations

import datetime
import json
import sys
import time
from pathlib import Path

import jax
from absl import app, flags

from llama_jax import distributed
from llama_jax.config import enable_compilation_cache
from llama_jax.eval.fewshot import FEWSHOT_SEED
from llama_jax.eval.generative import CODE_TIMEOUT_S
from llama_jax.eval.harness import results_json, results_table
from llama_jax.eval.readers import TaskDataError
from llama_jax.eval.registry import EvalModel, EvalSettings, resolve_tasks
from llama_jax.eval.scoring import Scorer
from llama_jax.generate import Generator
from llama_jax.inference import define_model_flags

_LOAD_MODEL = define_model_flags()
_TASKS = flags.DEFINE_list("tasks", None, "comma-separated task names (llama_jax.eval.likelihood, "
                           "llama_jax.eval.generative) and groups", required=True)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "where the benchmarks' released files are",
                                required=True)
_OUTPUT = flags.DEFINE_string("output", "results.json", "results file (JSON)")
_NUM_FEWSHOT = flags.DEFINE_integer("num_fewshot", None, "shots per item (default: the paper's "
                                    "setting per task: 0, MMLU 5, GSM8k 8, MATH 4, MBPP 3)",
                                    lower_bound=0)
_LIMIT = flags.DEFINE_integer("limit", None, "score only the first N items of each task",
                              lower_bound=1)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "rows per model call", lower_bound=1)
_SEED = flags.DEFINE_integer("seed", FEWSHOT_SEED, "few-shot and sampling seed")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "generative tasks: completions per item "
                                    "(default: the paper's, e.g. 100 for gsm8k_maj100)",
                                    lower_bound=1)
_TEMPERATURE = flags.DEFINE_float("temperature", None, "generative tasks: sampling temperature "
                                  "(default: the paper's per task)", lower_bound=0)
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", None, "generative tasks: tokens per "
                                       "completion at most (default: per task)", lower_bound=1)
_SANDBOX_WORKERS = flags.DEFINE_integer("sandbox_workers", None, "code tasks: programs run at "
                                        "once (default: one per CPU)", lower_bound=1)
_SANDBOX_TIMEOUT = flags.DEFINE_float("sandbox_timeout_s", CODE_TIMEOUT_S, "code tasks: seconds "
                                      "each program may run", lower_bound=0.1)
_LOG_SAMPLES = flags.DEFINE_bool("log_samples", False, "also write every item's log-likelihoods "
                                 "and metrics to OUTPUT's name with .samples.jsonl")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  enable_compilation_cache()
  try:
    tasks = resolve_tasks(_TASKS.value)
    distributed.initialize_from_flags()
    loaded = _LOAD_MODEL()
  except (ValueError, FileNotFoundError) as error:
    raise app.UsageError(str(error)) from None
  scorer = Scorer.from_loaded(loaded, _BATCH_SIZE.value)
  generator = Generator.from_loaded(loaded, _BATCH_SIZE.value)
  progress = jax.process_index() == 0

  def generate(prompts, settings):
    return generator.generate(prompts, settings, seed=_SEED.value, progress=progress)

  model = EvalModel(scorer, generate)
  eval_settings = EvalSettings(
      num_fewshot=_NUM_FEWSHOT.value, limit=_LIMIT.value, seed=_SEED.value, progress=progress,
      num_samples=_NUM_SAMPLES.value, temperature=_TEMPERATURE.value,
      max_new_tokens=_MAX_NEW_TOKENS.value, sandbox_workers=_SANDBOX_WORKERS.value,
      sandbox_timeout_s=_SANDBOX_TIMEOUT.value)
  results, seconds = [], {}
  for task in tasks:
    start = time.perf_counter()
    try:
      results.append(task.evaluate(model, Path(_DATA_DIR.value), eval_settings))
    except TaskDataError as error:
      print(f"error: {error}", file=sys.stderr)
      sys.exit(1)
    except ValueError as error:  # settings that a task cannot use
      raise app.UsageError(str(error)) from None
    seconds[task.name] = round(time.perf_counter() - start, 2)
  if jax.process_index() != 0:
    return
  settings = {
      "ckpt": flags.FLAGS.ckpt, "model": loaded.description,
      "tokenizer": str(loaded.tokenizer.path), "model_config": vars(loaded.model_config),
      "tasks": _TASKS.value,
      "num_fewshot": _NUM_FEWSHOT.value, "limit": _LIMIT.value, "batch_size": scorer.batch_size,
      "mesh": dict(loaded.mesh_rules.mesh.shape), "seed": _SEED.value,
      "data_dir": str(Path(_DATA_DIR.value).absolute()),
      "prompts": "lm-evaluation-harness 0.4.13 task templates", "jax": jax.__version__,
      "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
      "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
      "seconds_per_task": seconds, "compiled_shapes": sorted(scorer.compiled_shapes),
      "truncated_prompts": generator.truncated_prompts,
  }
  output = Path(_OUTPUT.value)
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(json.dumps(results_json(results, settings), indent=2) + "\n")
  if _LOG_SAMPLES.value:
    with open(output.with_suffix(".samples.jsonl"), "w") as f:
      for result in results:
        for sample in result.samples:
          f.write(json.dumps({"task": result.task.name, **sample}) + "\n")
  print(results_table(results))
  print(f"results written to {output}")


if __name__ == "__main__":
  app.run(main)
