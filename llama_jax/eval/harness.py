"""Running tasks end to end: prompts, scoring, metrics with standard errors, results."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm import tqdm

from llama_jax.eval.scoring import Scorer
from llama_jax.eval.tasks import FEWSHOT_SEED, Example, Request, Task, with_fewshot


class Metric(NamedTuple):
  mean: float
  stderr: float  # sample standard deviation / sqrt(n), as the harness's; NaN for one item
  n: int  # items that report it (a subset's, for "metric/subset")


def aggregate(values: Sequence[float]) -> Metric:
  array = np.asarray(values, np.float64)
  stderr = array.std(ddof=1) / math.sqrt(len(array)) if len(array) > 1 else float("nan")
  return Metric(float(array.mean()), float(stderr), len(array))


@dataclasses.dataclass
class TaskResult:
  task: Task
  num_fewshot: int
  metrics: dict[str, Metric]
  n: int
  samples: list[dict]  # per item: source, gold, log-likelihoods, metrics

  def as_json(self) -> dict:
    values = {"n": self.n, "num_fewshot": self.num_fewshot}
    for name, metric in self.metrics.items():
      values[name] = metric.mean
      values[f"{name}_stderr"] = metric.stderr
      if metric.n != self.n:
        values[f"{name}_n"] = metric.n
    return values


def _requests(task: Task, example: Example) -> list[Request]:
  requests = list(example.options)
  if task.answer_context is not None:
    requests += [Request(task.answer_context, option.continuation) for option in example.options]
  return requests


def evaluate_task(scorer: Scorer, task: Task, data_dir: Path, *, num_fewshot: int | None = None,
                  limit: int | None = None, seed: int = FEWSHOT_SEED,
                  progress: bool = True) -> TaskResult:
  """Scores the first `limit` items (all by default) of a task's evaluated split."""
  num_fewshot = task.default_fewshot if num_fewshot is None else num_fewshot
  examples = task.examples(data_dir)[:limit]
  if not examples:
    raise ValueError(f"{task.name}: no items to evaluate in {', '.join(task.files)}")
  examples = with_fewshot(task, examples, data_dir, num_fewshot, seed)
  requests, owner = [], []
  for index, example in enumerate(examples):
    for request in _requests(task, example):
      requests.append(request)
      owner.append(index)
  remaining = np.bincount(owner, minlength=len(examples))
  bar = tqdm(total=len(examples), desc=task.name, unit="example", disable=not progress,
             dynamic_ncols=True)

  def on_done(i: int) -> None:
    remaining[owner[i]] -= 1
    if remaining[owner[i]] == 0:
      bar.update(1)

  with bar:
    results = scorer.loglikelihood(requests, on_done=on_done)
  samples, per_metric = [], {}
  start = 0
  for example in examples:
    count = len(example.options)
    lls = [ll for ll, _ in results[start:start + count]]
    answer_lls = None
    if task.answer_context is not None:
      answer_lls = [ll for ll, _ in results[start + count:start + 2 * count]]
    start += count * (2 if task.answer_context is not None else 1)
    values = task.score(task, example, lls, answer_lls)
    for name, value in values.items():
      per_metric.setdefault(name, []).append(value)
    samples.append({"source": example.source, "gold": example.gold, "loglikelihoods": lls,
                    **({"answer_loglikelihoods": answer_lls} if answer_lls else {}), **values})
  metrics = {name: aggregate(values) for name, values in per_metric.items()}
  return TaskResult(task, num_fewshot, metrics, len(examples), samples)


def results_json(results: Sequence[TaskResult], settings: dict) -> dict:
  """What results.json holds: per task metrics, standard errors, n; the settings; the paper."""
  return {
      "results": {r.task.name: r.as_json() for r in results},
      "paper_llama_7b": {r.task.name: {"metric": r.task.paper_metric, "value": r.task.paper_7b}
                         for r in results if r.task.paper_7b is not None},
      "settings": settings,
  }


# Metrics that are not fractions of items (shown as they are, not in percent).
RAW_METRICS = ("likelihood_diff",)


def results_table(results: Sequence[TaskResult]) -> str:
  """A text table of every metric (fractions in percent) beside LLaMA-7B's in the paper."""
  width = max([len(name) + 2 for r in results for name in r.metrics] + [8])
  lines = [f"{'task':<16} {'metric':<{width}} {'value':>7} {'± stderr':>9} {'n':>6} "
           f"{'shots':>5}  LLaMA-7B (paper)"]
  for result in results:
    for name, metric in result.metrics.items():
      paper = result.task.paper_metric == name
      reference = f"{result.task.paper_7b:.1f}" if paper and result.task.paper_7b else ""
      label = name + (" *" if paper else "")
      scale = 1 if name.split("/")[0] in RAW_METRICS else 100  # "metric/subset" too
      lines.append(f"{result.task.name:<16} {label:<{width}} {scale * metric.mean:>7.2f} "
                   f"{scale * metric.stderr:>9.2f} {metric.n:>6} {result.num_fewshot:>5}  "
                   f"{reference}")
  return "\n".join(lines) + "\n* the metric the paper reports for the task"
