"""Small training runs in child processes (`python -m llama_jax.train`), for the tests and the
soak benchmark: their settings, starting one, waiting for a step, reading its losses. They run
from a checkout of the repository (configs/tiny.py)."""

import os
import subprocess
import sys
import time
from pathlib import Path

from llama_jax.metrics import read_metrics

REPO_ROOT = Path(__file__).resolve().parents[2]
VOCAB = 512
SOURCES = ("ccnet", "c4", "github", "wikipedia", "books", "arxiv", "stackexchange")


# configs/tiny.py made smaller still, so a run of a few dozen steps takes seconds.
SMALL_TINY = {
    "model.vocab_size": VOCAB, "model.dim": 64, "model.n_layers": 2, "model.n_heads": 4,
    "model.ffn_dim": 128, "model.context_length": 32, "train.batch_size": 8,
    "optim.warmup_steps": 2, "data.read_threads": 0,
}


def config_flags(settings: dict, sources: tuple[str, ...]) -> list[str]:
  """`--config.KEY=VALUE` flags for `settings`, reading only `sources` (share 1 each)."""
  shares = {f"data.shares.{name}": float(name in sources) for name in SOURCES}
  return [f"--config.{key}={value}" for key, value in {**settings, **shares}.items()]


def start_training(workdir: Path, flags: list[str], log) -> subprocess.Popen:
  """`python -m llama_jax.train --config=configs/tiny.py` on one CPU device, stderr to `log`."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO_ROOT)}
  env.pop("XLA_FLAGS", None)  # one device, whatever the caller simulates
  return subprocess.Popen([sys.executable, "-m", "llama_jax.train", "--config=configs/tiny.py",
                           f"--workdir={workdir}", *flags], cwd=REPO_ROOT, env=env,
                          stdout=subprocess.DEVNULL, stderr=log)


def losses(workdir) -> dict[int, float]:
  """Step -> loss of a run's metrics.jsonl."""
  return {record["step"]: record["loss"] for record in read_metrics(workdir / "metrics.jsonl")}


def wait_for_step(workdir, step, process, timeout=180):
  """Waits until the run in `workdir` has logged `step`; its stderr log is WORKDIR.log beside it."""
  deadline = time.time() + timeout
  while time.time() < deadline:
    if (workdir / "metrics.jsonl").exists() and max(losses(workdir), default=0) >= step:
      return
    assert process.poll() is None, (workdir.parent / f"{workdir.name}.log").read_text()[-3000:]
    time.sleep(0.05)
  raise TimeoutError(f"step {step} not reached")
