"""Training checkpoints with orbax-checkpoint: asynchronous, atomic, the last K kept.

A checkpoint is one orbax step directory holding three items:
  state     the TrainState (parameters, optimizer state, step), each array saved by the processes
            that hold its shards and restored straight into the shardings asked for;
  data      the data iterator's state (JSON), so a resumed run draws exactly the batches that
            the uninterrupted run would have drawn;
  progress  what the training loop needs besides (JSON): batches drawn, batches to skip, ...
Orbax writes into a temporary directory and renames it when every item is complete, so a run
killed mid-save leaves the previous checkpoint as the latest one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp


class Checkpoints:
  """The checkpoints of one run directory: `DIR/checkpoints/<step>`."""

  def __init__(self, workdir: str | Path, *, keep: int, async_save: bool = True):
    self.directory = Path(workdir).absolute() / "checkpoints"
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict, progress: dict) -> None:
    """Starts saving (in the background when asynchronous); returns once the arrays are copied."""
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        progress=ocp.args.JsonSave(progress)), force=True)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
    """(state, data_state, progress) of checkpoint `step`; arrays land in `abstract_state`'s
    shardings (a tree of jax.ShapeDtypeStruct with `sharding`)."""
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
        progress=ocp.args.JsonRestore()))
    return restored["state"], restored["data"], restored["progress"]

  def wait(self) -> None:
    """Blocks until the save in flight, if any, is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
