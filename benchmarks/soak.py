"""Kill training at random moments and check that the run it resumes is exactly the run it was.

  python -m benchmarks.soak [--kills=20] [--seed=0] [--steps=40] [--workdir=DIR]

Runs `python -m llama_jax.train --config=configs/tiny.py` (made smaller, on synthetic token
shards, a checkpoint every 2 steps) once without interruption, then again in another directory,
killing it with SIGKILL `--kills` times and starting it again each time in the same --workdir.
At least a quarter of the kills are aimed at an asynchronous checkpoint save in flight (right after
a step that saves); a kill counts as "during a save" only if the checkpoint directory shows one
unfinished afterwards (orbax's temporary directory, or a final one without its checksums). Then
the per-step losses (the last record of each step in metrics.jsonl) and the final parameters are
compared bitwise with the uninterrupted run. Prints one JSON line: kills, kills during a save,
resumes, steps replayed, mismatches.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import tempfile
import time
from pathlib import Path

import numpy as np
import orbax.checkpoint as ocp

from llama_jax.checkpoint import CHECKSUMS
from llama_jax.metrics import read_metrics
from llama_jax.testing.training_runs import SMALL_TINY, VOCAB, config_flags, start_training
from preprocessing.testing.token_shards import write_source

EVERY_STEPS = 2


def _last_step(workdir: Path) -> int:
  path = workdir / "metrics.jsonl"
  return max((r["step"] for r in read_metrics(path)), default=0) if path.exists() else 0


def _unfinished_saves(workdir: Path) -> list[str]:
  """Checkpoints a save left unfinished (looked at after the kill): orbax's temporary
  directories, and final ones without their checksums."""
  directory = workdir / "checkpoints"
  if not directory.is_dir():
    return []
  return sorted(entry.name for entry in directory.iterdir()
                if "tmp" in entry.name
                or (entry.name.isdigit() and not (entry / CHECKSUMS / "0.json").exists()))


def _final_params(workdir: Path) -> dict[str, np.ndarray]:
  step = max(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  state = ocp.PyTreeCheckpointer().restore(workdir / "checkpoints" / str(step) / "state")
  flat = {}

  def visit(prefix, node):
    if isinstance(node, dict):
      for key, value in node.items():
        visit(f"{prefix}/{key}", value)
    else:
      flat[prefix] = np.asarray(node)

  visit("", state["params"])
  return flat


def soak(kills: int, seed: int, steps: int, root: Path) -> dict:
  rng = random.Random(seed)
  shards = root / "tokens"
  docs_rng = np.random.default_rng(seed)
  write_source(shards / "wikipedia", [np.append(docs_rng.integers(3, VOCAB, n), 2)
                                      for n in docs_rng.integers(5, 60, 2000)],
               num_shards=4, vocab_size=VOCAB)
  overrides = config_flags({**SMALL_TINY, "train.total_tokens": float(steps * 8 * 32),
                            "checkpoint.every_steps": EVERY_STEPS, "data.dir": shards},
                           ("wikipedia",))
  with open(root / "train.log", "w") as log:
    reference = start_training(root / "reference", overrides, log)
    if reference.wait() != 0:
      raise RuntimeError(f"the uninterrupted run failed; see {root / 'train.log'}")

    workdir = root / "soak"
    done = during_save = 0
    while done < kills:
      process = start_training(workdir, overrides, log)
      aim_at_save = done < (kills + 3) // 4 or rng.random() < 0.5
      start_step = _last_step(workdir)
      target = start_step + rng.randint(1, 2 * EVERY_STEPS)
      if aim_at_save:  # right after a step that saves: the save is then in flight
        target += (-target) % EVERY_STEPS
      while _last_step(workdir) < target and process.poll() is None:
        time.sleep(0.002 if aim_at_save else 0.02)
      if process.poll() is not None:  # finished before the kill: start over in a new directory
        raise RuntimeError(f"the run ended before kill {done + 1}; use more --steps")
      if not aim_at_save:
        time.sleep(rng.uniform(0, 0.3))
      process.send_signal(signal.SIGKILL)
      process.wait()
      done += 1
      unfinished = _unfinished_saves(workdir)
      during_save += bool(unfinished)
      log.write(f"soak: kill {done} after step {_last_step(workdir)} "
                f"({'aimed at a save' if aim_at_save else 'at random'}); unfinished: "
                f"{unfinished}\n")
      log.flush()
    final = start_training(workdir, overrides, log)
    if final.wait() != 0:
      raise RuntimeError(f"the resumed run failed; see {root / 'train.log'}")

  expected = {r["step"]: r["loss"] for r in read_metrics(root / "reference" / "metrics.jsonl")}
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl") if line.strip()]
  got = {r["step"]: r["loss"] for r in read_metrics(workdir / "metrics.jsonl")}
  mismatches = sum(got.get(step) != loss for step, loss in expected.items())
  mismatches += len(set(got) - set(expected))
  ref_params, params = _final_params(root / "reference"), _final_params(workdir)
  mismatches += sum(not np.array_equal(ref_params[name], params.get(name))
                    for name in ref_params)
  return {"benchmark": "soak", "kills": done, "kills_during_save": during_save,
          "resumes": done, "steps": steps, "steps_replayed": len(records) - len(got),
          "mismatches": mismatches, "seed": seed}


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--kills", type=int, default=20)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--steps", type=int, default=None,
                      help="training steps (default: 6 per kill, at least 24)")
  parser.add_argument("--workdir", default=None, help="default: a temporary directory")
  args = parser.parse_args(argv)
  steps = args.steps or max(24, 6 * args.kills)
  if args.workdir:
    result = soak(args.kills, args.seed, steps, Path(args.workdir))
  else:
    with tempfile.TemporaryDirectory() as root:
      result = soak(args.kills, args.seed, steps, Path(root))
  print(json.dumps(result), flush=True)
  return result


if __name__ == "__main__":
  main()
