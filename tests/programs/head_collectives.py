"""Compiles the flow head's forward on 8 fake CPU devices with tensor = 2 and prints the
collectives in its HLO by kind, as one RESULT line of JSON (tests/test_sharding.py reads it).

Run in a fresh interpreter: the fake device count must be set before jax is imported.
"""

import collections
import json
import os
import re

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8")

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
from flax import nnx  # pylint: disable=wrong-import-position
from jax.sharding import NamedSharding, PartitionSpec as P  # pylint: disable=wrong-import-position

from configs import tiny  # pylint: disable=wrong-import-position
from pra_jax import sharding  # pylint: disable=wrong-import-position
from pra_jax.models import pra  # pylint: disable=wrong-import-position

COLLECTIVE = re.compile(
    r"= \S+ (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(")

config = tiny.get_config()
config.sharding.mesh.update(data=4, fsdp=1, tensor=2)
mesh = sharding.make_mesh(config.sharding.mesh)
head = pra.abstract_model(config, mesh).head
graphdef, state = nnx.split(head)
state = jax.tree.map(lambda l: jax.ShapeDtypeStruct(
    l.shape, l.dtype, sharding=NamedSharding(mesh, l.sharding.spec)), state)
m_rows = 8 * sharding.batch_divisor(mesh)
rows = sharding.batch_sharding(mesh)
z_t_MZ = jax.ShapeDtypeStruct((m_rows, head.out_dim), jnp.float32, sharding=rows)
t_M = jax.ShapeDtypeStruct((m_rows,), jnp.float32, sharding=rows)
h_MD = jax.ShapeDtypeStruct((m_rows, config.model.backbone.width), jnp.float32, sharding=rows)


def forward(state, z_t_MZ, t_M, h_MD):
  return nnx.merge(graphdef, state)(z_t_MZ, t_M, h_MD)


with sharding.use_mesh(mesh):
  hlo = jax.jit(forward).lower(state, z_t_MZ, t_M, h_MD).compile().as_text()
counts = collections.Counter(COLLECTIVE.findall(hlo))
print("RESULT" + json.dumps({"mesh": dict(mesh.shape), "head_depth": config.model.head.depth,
                             "collectives": dict(counts)}))
