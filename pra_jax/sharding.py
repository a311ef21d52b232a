"""The device mesh, the one table of logical axis names, and the mapping from names to mesh axes.

Every parameter and pinned activation names its dimensions with the logical names of
LOGICAL_RULES (models/layers.py attaches them with `nnx.with_partitioning`); Flax's logical-axis
rules turn them into mesh axes under `use_mesh`. Changing how a size shards means editing this
table or the config's mesh, never the model code.
"""

import contextlib
import math
from typing import Sequence

import jax
import numpy as np
from flax.core import spmd as flax_spmd
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name (what the dimension is) -> mesh axis (None = replicated). Batch rows split over
# data and fsdp; fsdp also shards the model width of the backbone and the flow head (ZeRO-3 style:
# gathered per layer); tensor splits attention heads and the hidden side of each MLP pair, so a
# pair (width -> hidden -> width) needs one reduction. E and G are small: replicated.
LOGICAL_RULES = (
    ("act_batch", ("data", "fsdp")),   # Activation rows: images, or images x patches.
    ("backbone_width", "fsdp"),        # D, model.backbone.width (and h, the head's condition).
    ("backbone_hidden", "tensor"),     # The backbone MLP's hidden units (D x mlp_ratio).
    ("heads", "tensor"),               # Attention heads x head dim (the q/k/v/o side).
    ("head_width", "fsdp"),            # F, model.head.width: the flow head's residual stream.
    ("head_hidden", "tensor"),         # The flow head's tensor-split side: each MLP pair's
                                       # hidden units, the condition c and its modulations.
    ("chunks", None),                  # The outputs of one fused projection (AdaLN's shift,
                                       # scale and gate): whole, so each is split like the rest.
    ("state_width", None),             # model.state.width: E and G's residual stream.
    ("state_hidden", None),            # E and G's hidden side of each MLP pair.
    ("state_dim", None),               # Z, model.state.dim.
    ("patch_pixels", None),            # P, pixels per patch.
    ("classes", None),                 # Class-embedding rows (num_classes + the null class).
    ("layers", None),                  # The stacked axis of scanned blocks.
)
LOGICAL_NAMES = tuple(name for name, _ in LOGICAL_RULES)


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


def logical_spec(shape: Sequence[int], axes: Sequence[str | None]) -> P | None:
  """The mesh PartitionSpec of an activation's logical axis names, under the rules in context.

  None outside `use_mesh` (one device, the data-parallel sampler). The names are mapped by
  Flax's rules; an activation axis the mesh does not divide (a sampling batch smaller than the
  data x fsdp devices) stays whole rather than failing. Parameters never reach that case:
  `check_params_divide` refuses them before anything compiles.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not flax_spmd.get_logical_axis_rules():
    return None
  spec = flax_spmd.get_pspec(tuple(axes))
  return P(*(names if size % _mesh_size(mesh, names) == 0 else None
             for size, names in zip(shape, spec)))


def check_params_divide(params, mesh) -> None:
  """Refuses a parameter dimension that the mesh axes its logical name maps to do not divide.

  `params`: an nnx.State of Params (abstract ones will do); `mesh`: a Mesh or AbstractMesh.
  XLA would otherwise keep such a parameter whole on every device (a 12-wide dimension under
  fsdp = 8 is replicated), and the memory it was meant to save runs out somewhere else. Raises
  ValueError naming the parameter, the dimension, its width and the mesh axis.
  """
  from flax import nnx  # Deferred, as in use_mesh.

  for path, var in nnx.to_flat_state(params):
    names = var.get_metadata().get("out_sharding") or ()
    shape = var.get_value().shape
    for dim, (size, name, mesh_axes) in enumerate(
        zip(shape, names, flax_spmd.from_sharding_rules(names, LOGICAL_RULES))):
      devices = _mesh_size(mesh, mesh_axes)
      if size % devices:
        where = "/".join(map(str, path))
        raise ValueError(
            f"parameter {where} {tuple(shape)}: dimension {dim} ({name!r}, {size} wide) does "
            f"not split over mesh axis {mesh_axes!r} of size {devices} (sharding.mesh "
            f"{dict(mesh.shape)}): choose a mesh size that divides {size}, or a width that "
            f"{devices} divides")


def _mesh_size(mesh, names) -> int:
  """Devices along one PartitionSpec entry (None, an axis name, or a tuple of them)."""
  names = (names,) if isinstance(names, str) else tuple(names or ())
  return math.prod(mesh.shape[a] for a in names)


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
