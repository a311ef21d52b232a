"""The device mesh and the one table that maps logical axis names to mesh axes.

Parameters carry logical names (see models/layers.py); changing how a size shards means editing
LOGICAL_RULES or the config's mesh, never the model code.
"""

import contextlib
import math

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (None = replicated). Batch splits over data and fsdp; fsdp also
# shards the model width of every weight; tensor splits heads and MLP hidden units.
LOGICAL_RULES = (
    ("act_batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("head_mlp", "fsdp"),
    ("head_mlp_out", "tensor"),
    ("state_mlp", None),
    ("state_mlp_out", None),
    ("layers", None),
    ("vocab", None),
    ("patch", None),
    ("state", None),
)


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, ...]:
  """Resolves the config's {data, fsdp, tensor} sizes; one of them may be -1 (fill)."""
  unknown = set(mesh_cfg.keys()) - set(MESH_AXES)
  if unknown:
    raise ValueError(f"sharding.mesh has unknown axes {sorted(unknown)}; accepted: {MESH_AXES}")
  sizes = [int(mesh_cfg.get(a, 1)) for a in MESH_AXES]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"sharding.mesh sizes must be positive with at most one -1, got "
                     f"{dict(zip(MESH_AXES, sizes))}")
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % fixed:
      raise ValueError(f"sharding.mesh {dict(zip(MESH_AXES, sizes))} does not divide the "
                       f"{num_devices} devices")
    sizes[sizes.index(-1)] = num_devices // fixed
  if math.prod(sizes) != num_devices:
    raise ValueError(f"sharding.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} "
                     f"devices, but {num_devices} are available")
  return tuple(sizes)


def make_mesh(mesh_cfg, devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else list(devices)
  shape = mesh_shape(mesh_cfg, len(devices))
  # Auto axes: GSPMD propagates shardings through the model, as the model code assumes.
  return jax.make_mesh(shape, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


def single_device_mesh() -> jax.sharding.Mesh:
  return make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])


@contextlib.contextmanager
def use_mesh(mesh):
  """Mesh and logical rules together: parameters created inside are born sharded."""
  from flax import nnx  # Deferred so that this module stays importable before jax is set up.

  with jax.set_mesh(mesh), nnx.logical_axis_rules(LOGICAL_RULES):
    yield mesh


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) axis split over data x fsdp; the rest replicated."""
  return NamedSharding(mesh, P(("data", "fsdp")))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def global_batch(local_batch: dict, mesh) -> dict:
  """Per-process numpy batches -> global jax arrays sharded over the batch axes."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local_batch.items()}
