"""What evaluating tasks gives: per-item metrics averaged with standard errors, results.json, and
the printed table beside the paper's numbers."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:
  from llama_jax.eval.registry import Task


class Metric(NamedTuple):
  mean: float
  stderr: float  # sample standard deviation / sqrt(n), as the harness's; NaN for one item
  n: int  # items that report it (a subset's, for "metric/subset")


def aggregate(values: Sequence[float]) -> Metric:
  array = np.asarray(values, np.float64)
  stderr = array.std(ddof=1) / math.sqrt(len(array)) if len(array) > 1 else float("nan")
  return Metric(float(array.mean()), float(stderr), len(array))


def average_metrics(per_item: Sequence[dict[str, float]]) -> dict[str, Metric]:
  """Each metric averaged over the items that report it, in the order metrics first appear."""
  values: dict[str, list[float]] = {}
  for metrics in per_item:
    for name, value in metrics.items():
      values.setdefault(name, []).append(value)
  return {name: aggregate(values[name]) for name in values}


def by_subset(values: dict[str, float], subset: str) -> dict[str, float]:
  """An item's metrics, and for an item of a subset the same again as "metric/subset" (each
  metric is averaged over the items that report it)."""
  if not subset:
    return values
  return values | {f"{name}/{subset}": value for name, value in values.items()}


@dataclasses.dataclass
class TaskResult:
  task: Task
  num_fewshot: int
  metrics: dict[str, Metric]
  n: int
  samples: list[dict]  # per item: its source, what was scored, its metrics

  def as_json(self) -> dict:
    values = {"n": self.n, "num_fewshot": self.num_fewshot}
    for name, metric in self.metrics.items():
      values[name] = metric.mean
      values[f"{name}_stderr"] = metric.stderr
      if metric.n != self.n:
        values[f"{name}_n"] = metric.n
    return values


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
