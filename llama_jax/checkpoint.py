"""Training checkpoints with orbax-checkpoint: asynchronous, atomic, checksummed, the last K kept.

A checkpoint is one orbax step directory holding three items:
  state     the TrainState (parameters, optimizer state, step), each array saved by the processes
            that hold its shards and restored straight into the shardings asked for;
  data      the data iterator's state (JSON), so a resumed run draws exactly the batches that
            the uninterrupted run would have drawn;
  progress  what the training loop needs besides (JSON): batches drawn, batches to skip, ...
Orbax writes into a temporary directory and renames it when every item is complete, so a run
killed mid-save leaves the previous checkpoint as the latest one. Once a save is final, each
process records the CRC-32 and size of the files it wrote (`CHECKSUMS/<process>.json` inside the
checkpoint); a restore checks them first, so a checkpoint truncated, missing a file, with changed
bytes, or whose checksums were never written (killed in between) is named, set aside under
`checkpoints/corrupt/`, and the one before it used instead.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import zlib
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

CHECKSUMS = "llama_jax_checksums"  # a directory: one table per process, <process>.json


class CorruptCheckpoint(Exception):
  """A checkpoint whose files do not match their recorded checksums (or cannot be restored)."""


def _crc32(path: Path) -> int:
  crc = 0
  with open(path, "rb") as f:
    while block := f.read(1 << 22):
      crc = zlib.crc32(block, crc)
  return crc


def _owner(relative: Path) -> int:
  """The process that wrote a file: orbax names per-process data `...process_<i>...`; the rest
  (metadata, JSON items) is process 0's."""
  for part in relative.parts:
    if match := re.search(r"process_(\d+)", part):
      return int(match.group(1))
  return 0


def _files_by_owner(step_dir: Path) -> dict[int, list[Path]]:
  owners: dict[int, list[Path]] = {}
  for path in sorted(step_dir.rglob("*")):
    relative = path.relative_to(step_dir)
    if path.is_file() and relative.parts[0] != CHECKSUMS:
      owners.setdefault(_owner(relative), []).append(relative)
  return owners


def record_checksums(step_dir: Path, process: int = 0) -> None:
  """Writes the CRC-32 and size of the files `process` wrote in a final checkpoint directory
  (each process hashes its own shards; written under a temporary name, then renamed)."""
  files = _files_by_owner(step_dir).get(process, [])
  table = {str(f): {"bytes": (step_dir / f).stat().st_size, "crc32": _crc32(step_dir / f)}
           for f in files}
  (step_dir / CHECKSUMS).mkdir(exist_ok=True)
  partial = step_dir / CHECKSUMS / f"{process}.json.partial"
  partial.write_text(json.dumps(table, indent=1))
  partial.rename(step_dir / CHECKSUMS / f"{process}.json")


def verify_checksums(step_dir: Path) -> None:
  """Raises CorruptCheckpoint naming the first file that is missing, truncated or changed."""
  tables = {int(p.stem): json.loads(p.read_text()) for p in (step_dir / CHECKSUMS).glob("*.json")}
  present = _files_by_owner(step_dir)
  for process in sorted(set(present) | {0}):
    if process not in tables:
      raise CorruptCheckpoint(f"{step_dir / CHECKSUMS / f'{process}.json'} is missing: the save "
                              "never completed its checksums")
  for table in tables.values():
    for name, expected in table.items():
      path = step_dir / name
      if not path.is_file():
        raise CorruptCheckpoint(f"{path} is missing")
      size = path.stat().st_size
      if size != expected["bytes"]:
        raise CorruptCheckpoint(f"{path} has {size} bytes, {expected['bytes']} were written")
      if _crc32(path) != expected["crc32"]:
        raise CorruptCheckpoint(f"{path} has changed since it was written (CRC-32 mismatch)")
  for process, files in present.items():
    if unlisted := [str(f) for f in files if str(f) not in tables.get(process, {})]:
      raise CorruptCheckpoint(f"{step_dir}: files {unlisted} were not there when it was saved")


class Checkpoints:
  """The checkpoints of one run directory: `DIR/checkpoints/<step>`."""

  def __init__(self, workdir: str | Path, *, keep: int, async_save: bool = True):
    self.directory = Path(workdir).absolute() / "checkpoints"
    self._async = async_save
    self._unrecorded: int | None = None  # the saved step whose checksums are not written yet
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options)

  def _finish(self) -> None:
    """Waits for the save in flight to be final, then records its checksums."""
    self._manager.wait_until_finished()
    if self._unrecorded is not None:
      step, self._unrecorded = self._unrecorded, None
      record_checksums(self.directory / str(step), jax.process_index())

  def poll(self) -> None:
    """Records the checksums of the last save as soon as it is final (cheap when it is not)."""
    if self._unrecorded is not None and not self._manager.is_saving_in_progress():
      self._finish()

  def steps(self) -> list[int]:
    """The final checkpoints, oldest first."""
    self._manager.reload()
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, progress: dict) -> None:
    """Starts saving (in the background when asynchronous); returns once the arrays are copied.

    A failure (of this save, or of the previous asynchronous one surfacing now) is raised; the
    checkpoints already on disk are untouched, since orbax deletes old ones only after a save
    is final.
    """
    self._finish()  # orbax would wait for the previous save here anyway
    self._unrecorded = step
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state),
        progress=ocp.args.JsonSave(progress)), force=True)
    if not self._async:
      self._finish()

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict, dict]:
    """(state, data_state, progress) of checkpoint `step` after checking its checksums; arrays
    land in `abstract_state`'s shardings (a tree of jax.ShapeDtypeStruct with `sharding`)."""
    verify_checksums(self.directory / str(step))
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
          progress=ocp.args.JsonRestore()))
    except Exception as error:  # whatever orbax or tensorstore raise on unreadable data
      raise CorruptCheckpoint(
          f"{self.directory / str(step)} cannot be restored: {error}") from error
    return restored["state"], restored["data"], restored["progress"]

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict, dict] | None:
    """The newest checkpoint that passes its checks; corrupt ones are named and set aside.

    None when there is no checkpoint at all; an error when there were some and none is good
    (starting over silently would throw the run away).
    """
    corrupt = []
    for step in reversed(self.steps()):
      try:
        return self.restore(step, abstract_state)
      except CorruptCheckpoint as error:
        logging.error("checkpoint %d is corrupt, using an earlier one: %s", step, error)
        corrupt.append(self._set_aside(step))
    if corrupt:
      raise CorruptCheckpoint(f"every checkpoint is corrupt (moved to {', '.join(corrupt)}); "
                              "restore one by hand or start a new run in another --workdir")
    return None

  def _set_aside(self, step: int) -> str:
    """Moves a corrupt checkpoint out of orbax's sight (a later save may reuse its step)."""
    target = self.directory / "corrupt" / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
    if jax.process_index() == 0:
      target.parent.mkdir(exist_ok=True)
      shutil.move(self.directory / str(step), target)
    self._manager.reload()
    return str(target)

  def wait(self) -> None:
    """Blocks until the save in flight, if any, is on disk and checksummed (raising what it
    failed with)."""
    self._finish()

  def close(self) -> None:
    self._manager.close()


def restore_params(workdir: str | Path, abstract_params: Any,
                   step: int | None = None) -> tuple[Any, int]:
  """(parameters, step) of a run's checkpoint `step` (default: the newest), checksums verified.

  Reads the model parameters only, not the optimizer state (twice their size), into the
  shardings of `abstract_params` (jax.ShapeDtypeStruct leaves with `sharding`).
  """
  directory = Path(workdir).absolute() / "checkpoints"
  with ocp.CheckpointManager(directory) as manager:
    steps = sorted(manager.all_steps())
    if not steps:
      raise FileNotFoundError(f"{directory} has no checkpoints")
    step = steps[-1] if step is None else step
    if step not in steps:
      raise FileNotFoundError(f"{directory} has no checkpoint {step}; it has {steps}")
    verify_checksums(directory / str(step))
    item = {"params": abstract_params}
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))
  return restored["state"]["params"], step


def check_storage(workdir: str | Path, checkpoint_bytes: int, keep: int) -> None:
  """Refuses a work directory that cannot be written or cannot hold one more checkpoint."""
  directory = Path(workdir)
  try:
    directory.mkdir(parents=True, exist_ok=True)
    probe = directory / f".write-test-{os.getpid()}"
    probe.write_bytes(b"0")
    probe.unlink()
  except OSError as error:
    raise ValueError(f"--workdir={workdir} is not writable ({error}); checkpoints and metrics "
                     "go there") from None
  free = shutil.disk_usage(directory).free
  gb = 1e9
  if free < checkpoint_bytes:
    raise ValueError(f"--workdir={workdir} has {free / gb:.2f} GB free, but one checkpoint of "
                     f"this run takes {checkpoint_bytes / gb:.2f} GB (and keeping {keep} takes up "
                     f"to {(keep + 1) * checkpoint_bytes / gb:.2f} GB while a new one is written); "
                     "free space or choose another --workdir")
  if free < (keep + 1) * checkpoint_bytes:
    logging.warning("--workdir=%s has %.2f GB free; keeping %d checkpoints of %.2f GB needs up to "
                    "%.2f GB: saves may fail later", workdir, free / gb, keep,
                    checkpoint_bytes / gb, (keep + 1) * checkpoint_bytes / gb)


def save_params(workdir: str | Path, params: Any, step: int = 0) -> None:
  """Writes a checkpoint of parameters alone (conversions from other formats): item `state` =
  {"params": params} in `workdir/checkpoints/<step>`, checksummed, which `restore_params` reads
  as it reads a training checkpoint. `params` is laid out as training saves it (an nnx.State of
  Params); its arrays may be numpy arrays in host memory."""
  directory = Path(workdir).absolute() / "checkpoints"
  options = ocp.CheckpointManagerOptions(create=True, enable_async_checkpointing=False)
  with ocp.CheckpointManager(directory, options=options) as manager:
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave({"params": params})))
    manager.wait_until_finished()
  record_checksums(directory / str(step), jax.process_index())
