"""memory_plan.plan() imported by a program that set up its own fake devices before importing
jax (tests/test_plan.py). Prints RESULT{json}."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import json
os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=2"
from configs import tiny
from pra_jax import memory_plan as plan
config = tiny.get_config()
results = [plan.plan(config, 2, {"data": 2})]
config.train.grad_accum_steps = 4  # One example per device at a time.
results.append(plan.plan(config, 2, {"data": 2}))
print("RESULT" + json.dumps(results))
