"""The loss per step of `tiny` on one device fed the concatenated batches of N data shards: what
N processes must reproduce (tests/test_multiprocess.py). argv: steps, processes. Prints
RESULT{json}."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import json
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from configs import tiny
from pra_jax import data, sharding, train_step

config = tiny.get_config()
config.train.lr_schedule = "constant"
num_steps, num_processes = int(sys.argv[1]), int(sys.argv[2])
mesh = sharding.single_device_mesh()
graphdef, state = nnx.split(train_step.create_bundle(config, mesh))
step_fn = train_step.jit_train_step(graphdef, state, config)
shards = [data.make_train_iterator(
    config.data, local_batch_size=config.train.batch_size // num_processes,
    seed=config.seed, process_index=i, process_count=num_processes)
    for i in range(num_processes)]
totals = {}
with sharding.use_mesh(mesh):
  for step in range(1, num_steps + 1):
    parts = [next(it) for it in shards]
    batch = {k: np.concatenate([p[k] for p in parts]) for k in ("image", "label")}
    batch = sharding.global_batch(batch, mesh)
    state, metrics = step_fn(state, batch["image"], batch["label"])
    totals[step] = float(metrics["train/total"])
print("RESULT" + json.dumps(totals))
