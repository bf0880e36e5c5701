"""The training loop's host-side state, and the safety rails that read and update it.

Neither touches devices, data or checkpoint files: the Trainer (llama_jax.train) draws the
batches, runs the steps, saves `LoopState.to_json()` with every checkpoint (its `progress` item)
and acts on the rails' decisions, so both are tested without training (tests/test_safety_rails.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from absl import logging


@dataclasses.dataclass
class LoopState:
  """What a resumed run needs besides the train state and the data iterator's position, so that
  a run killed and resumed continues exactly as the uninterrupted one, the spike rail included.

  A fresh run starts from LoopState(). The JSON keys are the field names.
  """

  # Batches drawn from the data iterator, skipped ones included (batch n is the n-th drawn).
  batches_drawn: int = 0
  # Batches to pass over when drawn (those that made the rails roll back), sorted.
  skip_batches: list[int] = dataclasses.field(default_factory=list)
  # The last `spike_window` losses of applied updates, oldest first: what spikes are judged by.
  recent_losses: list[float] = dataclasses.field(default_factory=list)
  # Updates skipped for a non-finite loss or gradient.
  skipped_updates: int = 0
  # Rollbacks to the last checkpoint, over the whole run.
  rollbacks: int = 0
  # Checkpoint saves that failed (training went on and the next interval tried again).
  failed_saves: int = 0
  # The batches of the current run of non-finite steps; empty after a finite one.
  nonfinite_batches: list[int] = dataclasses.field(default_factory=list)
  # EnergyMeter.state() at the last save: the totals a resumed run goes on from.
  energy: dict[str, float] | None = None

  def to_json(self) -> dict[str, Any]:
    """A JSON-able deep copy: an asynchronous save serialises it later, while the loop goes on
    changing this state."""
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, saved: dict[str, Any]) -> LoopState:
    """The state that to_json gave. Checkpoints of earlier versions wrote `failed_saves` and
    `nonfinite_batches` only when not zero or empty: missing keys take their defaults."""
    return cls(**saved)

  def rolled_back_to(self, checkpointed: LoopState, batches: list[int]) -> LoopState:
    """The state to go on from after rolling back to a checkpoint's: that one, passing over
    `batches` besides the batches this run skips already, and counting this rollback."""
    return dataclasses.replace(checkpointed,
                               skip_batches=sorted(set(self.skip_batches) | set(batches)),
                               rollbacks=self.rollbacks + 1)


@dataclasses.dataclass(frozen=True)
class Rollback:
  """The rails' decision: back to the last checkpoint, passing over `batches` from then on."""

  reason: str
  batches: list[int]


@dataclasses.dataclass(frozen=True)
class SafetyRails:
  """A non-finite loss or gradient skips the update (the jitted step does that); the rails count
  it, and `max_consecutive_skips` of them in a row, or a loss above `spike_factor` x the mean of
  the last `spike_window` losses once `spike_min_history` are seen, roll back (config.train)."""

  max_consecutive_skips: int
  spike_factor: float
  spike_window: int
  spike_min_history: int

  @classmethod
  def from_config(cls, train) -> SafetyRails:
    """The rails of `config.train`."""
    return cls(train.max_consecutive_skips, train.spike_factor, train.spike_window,
               train.spike_min_history)

  def check(self, loop: LoopState, loss: float, skipped: bool) -> Rollback | None:
    """Judges the step just run on batch `loop.batches_drawn`: counts its skipped update, or
    records its loss; a Rollback when the step calls for one (its loss is then not recorded)."""
    batch = loop.batches_drawn
    if skipped:
      loop.skipped_updates += 1
      loop.nonfinite_batches.append(batch)
      logging.warning("non-finite loss or gradient at batch %d: update skipped", batch)
      if len(loop.nonfinite_batches) >= self.max_consecutive_skips:
        return Rollback(f"{self.max_consecutive_skips} non-finite steps in a row",
                        list(loop.nonfinite_batches))
      return None
    loop.nonfinite_batches = []
    recent = loop.recent_losses
    if len(recent) >= self.spike_min_history:
      mean = sum(recent) / len(recent)
      if loss > self.spike_factor * mean:
        return Rollback(f"loss {loss:.4f} > {self.spike_factor} x recent mean {mean:.4f}",
                        [batch])
    loop.recent_losses = (recent + [loss])[-self.spike_window:]
    return None
