"""One process of the multi-host tests: `python tests/distributed_worker.py ADDRESS N ID [DIE]`.

Joins the run through llama_jax.distributed, loads only its own rows of the batch, takes one
sharded train step on the (2, 2, 2) mesh over all processes' devices and prints the metrics.
With DIE, it keeps taking steps instead, and process 1 kills itself (SIGKILL) after DIE steps.
"""

import json
import os
import signal
import sys

import jax
import jax.numpy as jnp
import numpy as np

from llama_jax import distributed
from tests.test_distributed import GLOBAL_BATCH, MESH, step_training, tokens

address, num_processes, process_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
die_after = int(sys.argv[4]) if len(sys.argv) > 4 else None
distributed.initialize(address, num_processes, process_id,
                       heartbeat_timeout_seconds=5 if die_after else 100)
training = step_training(jax.devices())
rows = distributed.process_batch_rows(training.batch_sharding, GLOBAL_BATCH)
local = {name: values[rows] for name, values in tokens().items()}
batch = distributed.global_batch(training.batch_sharding, local, GLOBAL_BATCH)
state, metrics = training.step(training.init(jnp.int32(0)), batch)
if die_after is not None:
  for step in range(10_000):
    print(f"process {process_id} step {step}", flush=True)
    if process_id == 1 and step == die_after:
      os.kill(os.getpid(), signal.SIGKILL)
    state, metrics = training.step(state, batch)
    float(metrics["loss"])  # wait for the step, collectives included
print(json.dumps({"process": jax.process_index(), "devices": jax.device_count(), "mesh": MESH,
                  "rows": [rows.start, rows.stop],
                  **{name: float(np.asarray(value)) for name, value in metrics.items()}}))
