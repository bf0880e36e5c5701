"""Every task of both families by name, and what running one takes.

`resolve_tasks` turns names (and groups) into tasks; each task then runs as
`task.evaluate(model, data_dir, settings)`, its family taking what it needs of the model (the
scorer's log-likelihoods or the generator's completions) and of the settings.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from llama_jax.eval.fewshot import FEWSHOT_SEED
from llama_jax.eval.generative import CODE_TIMEOUT_S, GENERATIVE_TASKS, Generate, GenerativeTask
from llama_jax.eval.likelihood import GROUPS, TASKS, LikelihoodTask, get_tasks

if TYPE_CHECKING:
  from llama_jax.eval.scoring import Scorer

Task = LikelihoodTask | GenerativeTask


@dataclasses.dataclass(frozen=True)
class EvalModel:
  """The model as tasks use it: likelihood tasks call its scorer, generative ones its generate."""

  scorer: Scorer
  generate: Generate


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """How tasks run; None leaves the task's own setting (the paper's)."""

  num_fewshot: int | None = None
  limit: int | None = None  # score only the first `limit` items of each task
  seed: int = FEWSHOT_SEED  # for drawing shots
  progress: bool = True
  # Generative tasks only.
  num_samples: int | None = None
  temperature: float | None = None
  max_new_tokens: int | None = None
  sandbox_workers: int | None = None  # code tasks: programs run at once (default: one per CPU)
  sandbox_timeout_s: float = CODE_TIMEOUT_S


def resolve_tasks(names: list[str]) -> list[Task]:
  """Likelihood and generative tasks by name, in the order given (groups expanded), each once."""
  likelihood = [name for name in names if name not in GENERATIVE_TASKS]
  if unknown := [name for name in likelihood if name not in TASKS and name not in GROUPS]:
    raise ValueError(f"unknown tasks {unknown}; likelihood tasks: {', '.join(TASKS)}; groups: "
                     f"{', '.join(GROUPS)}; generative tasks: {', '.join(GENERATIVE_TASKS)}")
  tasks = []
  for name in dict.fromkeys(names):
    tasks += [GENERATIVE_TASKS[name]] if name in GENERATIVE_TASKS else get_tasks([name])
  return list({task.name: task for task in tasks}.values())
