"""One process of the multi-host test: `python tests/distributed_worker.py ADDRESS N ID`.

Joins the run through llama_jax.distributed, loads only its own rows of the batch, takes one
sharded train step on the (2, 2, 2) mesh over all processes' devices and prints the metrics.
"""

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from llama_jax import distributed
from tests.test_distributed import GLOBAL_BATCH, MESH, step_training, tokens

address, num_processes, process_id = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
distributed.initialize(address, num_processes, process_id)
training = step_training(jax.devices())
rows = distributed.process_batch_rows(training.batch_sharding, GLOBAL_BATCH)
local = {name: values[rows] for name, values in tokens().items()}
batch = distributed.global_batch(training.batch_sharding, local, GLOBAL_BATCH)
_, metrics = training.step(training.init(jnp.int32(0)), batch)
print(json.dumps({"process": jax.process_index(), "devices": jax.device_count(), "mesh": MESH,
                  "rows": [rows.start, rows.stop],
                  **{name: float(np.asarray(value)) for name, value in metrics.items()}}))
