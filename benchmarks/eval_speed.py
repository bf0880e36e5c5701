"""Evaluation speed beside lm-evaluation-harness's `hf` model: python -m benchmarks.eval_speed
    [--items=400] [--rounds=3] [--batch_size=16] [--cores=0] [--workdir=DIR]

Both sides score PIQA's requests (context "Question: ...\\nAnswer:", each solution a
continuation) with the same random Hugging Face LLaMA (dim 256, 4 layers, Meta's 32000-token
vocabulary and tokenizer: 19.5M parameters, float32, context 256), in batches of --batch_size:
  llama_jax    llama_jax.eval.likelihood.evaluate_likelihood (what `python -m llama_jax.eval`
               runs per likelihood task): requests read from the task's files, scored, metrics
               computed;
  lm_eval_hf   lm-evaluation-harness's HFLM.loglikelihood on the same (context, continuation)
               requests, the model-side work of `lm_eval --model hf` (lm-eval's task machinery
               around it is left out, to the peer's advantage).
The items are the 10 PIQA validation rows of tests/data/eval/piqa, each made into --items / 10
distinct items by a numbered suffix on its goal (no request repeats, so neither side's cache of
identical requests helps). Each side runs in a fresh process pinned to --cores (one thread per
core: XLA's CPU flags, torch.set_num_threads), sides alternated round by round; each process
scores everything twice and reports the first call (model load excluded; with compiling for
llama_jax) and the second (steady state). One JSON line per measurement, then a summary line per
run: the median over rounds of llama_jax's items/s over lm_eval_hf's, and the largest difference
between the two sides' log-likelihoods.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PIQA = REPO_ROOT / "tests" / "data" / "eval" / "piqa"
TOKENIZER = REPO_ROOT / "tests" / "data" / "llama-tokenizer" / "tokenizer.model"
SIDES = ("llama_jax", "lm_eval_hf")


def write_inputs(workdir: Path, items: int) -> tuple[Path, Path]:
  """The random model as a Hugging Face directory and a PIQA data directory of `items` items."""
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  model_dir = workdir / "model"
  torch.manual_seed(0)
  config = LlamaConfig(vocab_size=32000, hidden_size=256, intermediate_size=688,
                       num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4,
                       max_position_embeddings=256, tie_word_embeddings=False,
                       initializer_range=0.1)  # logits of order 1, so choices differ
  LlamaForCausalLM(config).save_pretrained(model_dir)
  shutil.copy(TOKENIZER, model_dir / "tokenizer.model")
  rows = [json.loads(line) for line in (PIQA / "valid.jsonl").read_text().splitlines()]
  labels = (PIQA / "valid-labels.lst").read_text().split()
  data_dir = workdir / "data"
  (data_dir / "piqa").mkdir(parents=True, exist_ok=True)
  copies = -(-items // len(rows))
  variants = [(dict(row, goal=f"{row['goal']} ({copy + 1})"), label)
              for copy in range(copies) for row, label in zip(rows, labels, strict=True)][:items]
  (data_dir / "piqa" / "valid.jsonl").write_text(
      "".join(json.dumps(row) + "\n" for row, _ in variants))
  (data_dir / "piqa" / "valid-labels.lst").write_text(
      "".join(f"{label}\n" for _, label in variants))
  return model_dir, data_dir


def _requests(data_dir: Path):
  from llama_jax.eval.likelihood import get_tasks

  task = get_tasks(["piqa"])[0]
  examples = task.examples(data_dir)
  return task, examples, [option for example in examples for option in example.options]


def _timed_twice(score) -> tuple[float, float, list[float]]:
  start = time.perf_counter()
  score()
  first = time.perf_counter() - start
  start = time.perf_counter()
  lls = score()
  return first, time.perf_counter() - start, lls


def run_llama_jax(model_dir: Path, data_dir: Path, batch_size: int) -> dict:
  from llama_jax.eval.likelihood import evaluate_likelihood
  from llama_jax.eval.scoring import load_scorer

  scorer = load_scorer(model_dir, dtype="float32", batch_size=batch_size)
  task, examples, _ = _requests(data_dir)

  def score():
    result = evaluate_likelihood(scorer, task, data_dir, num_fewshot=0, progress=False)
    return [ll for sample in result.samples for ll in sample["loglikelihoods"]]

  first, steady, lls = _timed_twice(score)
  return {"items": len(examples), "first_call_s": first, "steady_s": steady,
          "compiled_shapes": len(scorer.compiled_shapes), "loglikelihoods": lls}


def run_lm_eval_hf(model_dir: Path, data_dir: Path, batch_size: int) -> dict:
  import torch
  from lm_eval.api.instance import Instance
  from lm_eval.models.huggingface import HFLM
  from transformers import LlamaForCausalLM

  from llama_jax.testing.hf_reference import SentencePieceLlamaTokenizer  # as SentencePiece

  model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
  lm = HFLM(pretrained=model, tokenizer=SentencePieceLlamaTokenizer(model_dir / "tokenizer.model"),
            batch_size=batch_size)
  _, examples, requests = _requests(data_dir)
  instances = [Instance("loglikelihood", doc={}, arguments=(r.context, r.continuation), idx=0)
               for r in requests]

  def score():
    return [ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True)]

  first, steady, lls = _timed_twice(score)
  return {"items": len(examples), "first_call_s": first, "steady_s": steady, "loglikelihoods": lls}


def worker(args: argparse.Namespace) -> None:
  """One side in this process, pinned to args.cores with one thread per core."""
  cores = [int(c) for c in args.cores.split(",")]
  os.sched_setaffinity(0, cores)
  if args.worker == "llama_jax":
    result = run_llama_jax(Path(args.model_dir), Path(args.data_dir), args.batch_size)
  else:
    import torch

    torch.set_num_threads(len(cores))
    result = run_lm_eval_hf(Path(args.model_dir), Path(args.data_dir), args.batch_size)
  print(json.dumps(result))


def _side(side: str, model_dir: Path, data_dir: Path, args: argparse.Namespace) -> dict:
  env = dict(os.environ, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
  if len(args.cores.split(",")) == 1:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false "
                        "intra_op_parallelism_threads=1").strip()
  command = [sys.executable, "-m", "benchmarks.eval_speed", f"--worker={side}",
             f"--model_dir={model_dir}", f"--data_dir={data_dir}",
             f"--batch_size={args.batch_size}", f"--cores={args.cores}"]
  done = subprocess.run(command, env=env, cwd=REPO_ROOT, capture_output=True, text=True)
  if done.returncode != 0:
    raise RuntimeError(f"{side} failed:\n{done.stderr[-4000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--items", type=int, default=400)
  parser.add_argument("--rounds", type=int, default=3)
  parser.add_argument("--batch_size", type=int, default=16)
  parser.add_argument("--cores", default="0", help="comma-separated CPU numbers, e.g. 0 or 0,1")
  parser.add_argument("--workdir", help="where the model and data go (default: a temporary one)")
  parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
  parser.add_argument("--model_dir", help=argparse.SUPPRESS)
  parser.add_argument("--data_dir", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    worker(args)
    return
  with tempfile.TemporaryDirectory() as temporary:
    workdir = Path(args.workdir or temporary)
    model_dir, data_dir = write_inputs(workdir, args.items)
    ratios, differences = [], []
    for round_ in range(args.rounds):
      results = {}
      for side in SIDES if round_ % 2 == 0 else SIDES[::-1]:
        result = _side(side, model_dir, data_dir, args)
        results[side] = result
        print(json.dumps({"job": "piqa", "side": side, "round": round_, "cores": args.cores,
                          "batch_size": args.batch_size, "items": result["items"],
                          "first_call_s": round(result["first_call_s"], 3),
                          "steady_s": round(result["steady_s"], 3),
                          "items_per_s": round(result["items"] / result["steady_s"], 2),
                          **({"compiled_shapes": result["compiled_shapes"]}
                             if "compiled_shapes" in result else {})}), flush=True)
      ours, theirs = (results[side] for side in SIDES)
      ratios.append(theirs["steady_s"] / ours["steady_s"])
      differences.append(max(abs(a - b) for a, b in zip(
          ours["loglikelihoods"], theirs["loglikelihoods"], strict=True)))
    print(json.dumps({"job": "piqa", "summary": "llama_jax / lm_eval_hf items per second",
                      "cores": args.cores, "rounds": args.rounds,
                      "ratio_median": round(statistics.median(ratios), 3),
                      "ratios": [round(r, 3) for r in ratios],
                      "max_abs_loglikelihood_difference": max(differences)}), flush=True)


if __name__ == "__main__":
  main()
