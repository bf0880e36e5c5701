"""Few-shot shots drawn as lm-evaluation-harness 0.4.13's samplers draw them, for both task
families (an item is an `Example` or an `Item`: anything that can tell whether it holds the same
item as another)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol, TypeVar

from llama_jax.eval.readers import TaskDataError

FEWSHOT_SEED = 1234  # lm-evaluation-harness's default fewshot_random_seed


class Shot(Protocol):
  def same_item(self, other) -> bool: ...


ShotT = TypeVar("ShotT", bound=Shot)


def draw_shots(task_name: str, item: ShotT, pool: Sequence[ShotT], num_fewshot: int,
               rng: random.Random, *, pool_name: str, drops_item: bool,
               first_n: bool = False) -> list[ShotT]:
  """The shots for `item`: the pool's first ones (the harness's first_n sampler), or a random
  sample (its default sampler). Where the harness keeps the item out of its own shots
  (`drops_item`: it does when the few-shot split is the evaluated one, or unset), one shot more is
  drawn and copies of the item dropped, then, if several were, a redraw from the others.
  `pool_name` says where the pool came from when it is too small."""
  needed = num_fewshot + drops_item
  if len(pool) < needed:
    raise TaskDataError(f"{task_name}: --num_fewshot={num_fewshot} needs {needed} items to draw "
                        f"shots from, but {pool_name} has {len(pool)}")
  if first_n:
    return list(pool[:num_fewshot])
  if not drops_item:
    return rng.sample(pool, num_fewshot)
  shots = [s for s in rng.sample(pool, num_fewshot + 1) if not s.same_item(item)]
  if len(shots) < num_fewshot:
    shots = rng.sample([s for s in pool if not s.same_item(item)], num_fewshot)
  return shots[:num_fewshot]
