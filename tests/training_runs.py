"""Helpers for tests that run `python -m llama_jax.train` in a child process and read its log."""

import time

from llama_jax.metrics import read_metrics


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
