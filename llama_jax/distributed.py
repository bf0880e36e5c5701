"""Multi-host start-up: one JAX process per host (or per GPU), joined through a coordinator.

Three ways, tried in this order:
  explicit  --coordinator_address=HOST:PORT --num_processes=N --process_id=I (all three);
  SLURM     inside `srun` (SLURM_JOB_ID, SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID and
            SLURM_LOCALID set, more than one task): jax.distributed reads them itself, the
            coordinator being the first node of the step;
  single    anything else: one process, nothing to initialize.
Every process must then run the same program; each loads only its own rows of the global batch
(`process_batch_rows`).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from absl import flags, logging
from jax.sharding import NamedSharding

_SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
                    "SLURM_LOCALID")

COORDINATOR_ADDRESS = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, for a multi-host run without SLURM")
NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "processes in the run (hosts)")
PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index, 0..num_processes-1")
HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout_seconds", 100, "a process silent this long is declared dead and every "
    "other process stops with a message naming it (JAX's coordination service)")


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_timeout_seconds: int = 100) -> str:
  """Joins the run's processes; returns how ('explicit', 'slurm' or 'single').

  When a process dies, the coordination service notices its missing heartbeats within
  `heartbeat_timeout_seconds` and stops every other process with an error naming it, instead of
  leaving them blocked in a collective; the launcher (launch/slurm.sh) then requeues the job,
  which resumes from the last checkpoint.
  """
  # CPU processes exchange collectives over TCP with gloo (tests, CPU clusters); GPUs use NCCL.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes,
              "process_id": process_id}
  given = [name for name, value in explicit.items() if value is not None]
  if given:
    if missing := [name for name in explicit if name not in given]:
      raise ValueError(f"--{', --'.join(given)} given without --{', --'.join(missing)}: an "
                       "explicit multi-host start needs all three")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"--process_id={process_id} must be in [0, --num_processes="
                       f"{num_processes})")
    jax.distributed.initialize(coordinator_address, num_processes, process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout_seconds)
    how = "explicit"
  elif all(name in os.environ for name in _SLURM_VARIABLES) and int(os.environ["SLURM_NTASKS"]) > 1:
    jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout_seconds)
    how = "slurm"
  else:
    how = "single"
  logging.info("process %d of %d (%s start), %d local of %d devices", jax.process_index(),
               jax.process_count(), how, jax.local_device_count(), jax.device_count())
  return how


def initialize_from_flags() -> str:
  return initialize(COORDINATOR_ADDRESS.value, NUM_PROCESSES.value, PROCESS_ID.value,
                    HEARTBEAT_TIMEOUT.value)


def process_batch_rows(batch_sharding: NamedSharding, global_batch_size: int) -> slice:
  """The rows of the global batch that this process's devices hold, as one contiguous slice.

  The mesh keeps a process's devices together along the batch axes, so the rows are contiguous;
  with P processes they are [p * B / P, (p + 1) * B / P).
  """
  rows = set()
  shape = (global_batch_size, 1)
  for index in batch_sharding.addressable_devices_indices_map(shape).values():
    rows.update(range(global_batch_size)[index[0]])
  start, stop = min(rows), max(rows) + 1
  if len(rows) != stop - start:
    raise ValueError(f"process {jax.process_index()} holds non-contiguous batch rows "
                     f"{sorted(rows)}; order the mesh's devices by process")
  return slice(start, stop)


def global_batch(batch_sharding: NamedSharding, local_rows: dict[str, np.ndarray],
                 global_batch_size: int) -> dict[str, jax.Array]:
  """One global array per field from this process's rows (see `process_batch_rows`)."""
  shape_of = {name: (global_batch_size, *rows.shape[1:]) for name, rows in local_rows.items()}
  return {name: jax.make_array_from_process_local_data(batch_sharding, rows, shape_of[name])
          for name, rows in local_rows.items()}
