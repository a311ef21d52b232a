"""Sampling data-parallel over every device of every process: the mesh, the weights replicated
on it, and one compiled generator that maps global image indices to images.

Image k draws from fold_in(key, k) alone (what rng.example_keys gives index k), so the
batch, the device and the process an image lands in never change it; each device runs
ar_loop.sample_patches on its own slice under shard_map, with no communication between devices.
"""

import time

import jax
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from pra_jax import sharding

from pra_jax.sampling import annealing, ar_loop

BATCH_AXES = ("data", "fsdp")


def sampling_mesh(devices=None) -> jax.sharding.Mesh:
  """Every device of every process on the batch axes, the model replicated: sampling needs no
  communication at all (PRA-L's 511M float32 parameters take 2 GB per device)."""
  return sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, devices)


def sampling_mesh_like(mesh) -> jax.sharding.Mesh:
  """sampling_mesh over `mesh`'s devices in `mesh`'s order: the training state moves onto it
  without a device reassignment (a grid or an eval during training)."""
  return jax.sharding.Mesh(np.asarray(mesh.devices).reshape(-1, 1, 1), sharding.MESH_AXES,
                           axis_types=(jax.sharding.AxisType.Auto,) * 3)


class DataParallelGenerator:
  """Images by global index on every device of `mesh`, compiled once for one global batch.

  A call is a global batch of B = per_device_batch x devices indices; device d generates its
  slice of them with ar_loop.sample_patches under shard_map, from its own copy of the model. Image
  k draws from fold_in(key, k), which is rng.example_keys(key, ..., first_index=k): the batch,
  device and process it lands in do not change it. The key is an argument, so one compile serves
  every stream (a training grid's, a periodic eval's).
  """

  def __init__(self, model, mesh, settings: ar_loop.SampleSettings, per_device_batch: int,
               runtime_knobs: bool = False):
    """runtime_knobs: cfg, temperature and the head steps per patch are arguments of each
    `dispatch` (ar_loop.sample_patches's knobs), so one compile serves every value of them (the
    sweep); settings then fix only the solver, the cfg schedule and whether guidance is on."""
    self.graphdef, state = nnx.split(model)
    self.mesh, self.batch = mesh, per_device_batch * mesh.size
    self.settings, self.runtime_knobs = settings, runtime_knobs
    self.num_patches = model.num_patches
    self.batch_sharding = sharding.batch_sharding(mesh)
    self._replicated = sharding.replicated(mesh)
    graphdef = self.graphdef

    def local(state, key_data, labels_b, index_b, knobs):
      m = nnx.merge(graphdef, state)
      key = jax.random.wrap_key_data(key_data)
      keys_b = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, index_b)
      x_BNP, _ = ar_loop.sample_patches(m, labels_b, keys_b, settings, knobs=knobs)
      return m.to_images(x_BNP)

    spec = P(BATCH_AXES)
    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), P(), spec, spec, P()),
                               out_specs=spec, check_vma=False))
    arg = lambda shape, dtype, where: jax.ShapeDtypeStruct(shape, dtype, sharding=where)
    abstract = jax.tree.map(lambda x: arg(x.shape, x.dtype, self._replicated), state)
    key_shape = jax.random.key_data(jax.random.key(0)).shape
    t0 = time.perf_counter()
    # No logical axis rules while tracing (a training loop has its own in context): the model's
    # activation constraints are no-ops, inside shard_map every array is already one device's.
    with nnx.logical_axis_rules(()):
      self.compiled = fn.lower(abstract, arg(key_shape, np.uint32, self._replicated),
                               arg((self.batch,), np.int32, self.batch_sharding),
                               arg((self.batch,), np.uint32, self.batch_sharding),
                               self._knobs(settings)).compile()
    self.compile_s = time.perf_counter() - t0
    self.state = None
    self.load(model)

  def place(self, state):
    """A model state (e.g. another EMA of the same run) replicated on the mesh."""
    if any(x.sharding != self._replicated for x in jax.tree.leaves(state)):
      state = jax.jit(lambda s: s, out_shardings=self._replicated)(state)
    return state

  def load(self, model) -> None:
    """Replicates `model`'s weights on the mesh (all processes take part): the next calls draw
    from them."""
    self.state = self.place(nnx.state(model))

  def unload(self) -> None:
    """Frees the replicated weights (a training run holds them only while it samples)."""
    self.state = None

  def _knobs(self, settings):
    if not self.runtime_knobs:
      return None
    if (settings.solver, settings.cfg_schedule, settings.cfg != 1.0) != (
        self.settings.solver, self.settings.cfg_schedule, self.settings.cfg != 1.0):
      raise ValueError(f"{settings} needs another compile than {self.settings}")
    steps_N = annealing.steps_per_position(settings.num_steps,
                                           settings.min_steps or settings.num_steps,
                                           self.num_patches)
    return {"cfg": np.float32(settings.cfg), "temperature": np.float32(settings.temperature),
            "steps_N": np.asarray(steps_N, np.int32)}

  def dispatch(self, index_B: np.ndarray, labels_B: np.ndarray, key,
               settings=None) -> jax.Array:
    """Starts one global batch; every process passes the same [G] numpy arrays and key. With
    runtime_knobs, `settings` (default: the compiled ones) gives this batch's knobs."""
    put = lambda a, where: jax.make_array_from_callback(a.shape, where, lambda i: a[i])
    key_data = np.asarray(jax.random.key_data(key), np.uint32)
    return self.compiled(self.state, put(key_data, self._replicated),
                         put(labels_B.astype(np.int32), self.batch_sharding),
                         put(index_B.astype(np.uint32), self.batch_sharding),
                         self._knobs(settings or self.settings))

  @staticmethod
  def local_rows(images_B, index_B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index_X, images_X): the rows of a batch that this process's devices hold, each once."""
    index, images = [], []
    for shard in images_B.addressable_shards:
      if shard.replica_id == 0:
        index.append(index_B[shard.index[0]])
        images.append(np.asarray(shard.data))
    return np.concatenate(index), np.concatenate(images)


def gather(images_B: jax.Array) -> np.ndarray:
  """The whole batch on every process (a collective all processes take part in)."""
  if jax.process_count() == 1:
    return np.asarray(images_B)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(images_B, tiled=True))


def generate_all(generator: DataParallelGenerator, labels_X: np.ndarray, key,
                 check_stop=None) -> np.ndarray:
  """uint8 images [X, H, W, C] for every label, image k from fold_in(key, k), on every process.

  Every process calls it with the same labels and key and takes part in every batch (the last
  one padded with repeats of the last label, dropped here). `check_stop()`, if given, runs before
  every batch (it raises to abandon the work; one process only, see preemption.Preemption).
  """
  labels_X = np.asarray(labels_X, np.int32)
  n, parts = len(labels_X), []
  for first in range(0, n, generator.batch):
    if check_stop is not None:
      check_stop()
    index_B = np.arange(first, first + generator.batch)
    parts.append(gather(generator.dispatch(index_B, labels_X[np.minimum(index_B, n - 1)], key)))
  return np.concatenate(parts)[:n]


def any_process(flag: bool) -> bool:
  """True on every process if it is True on any (all stop after the same chunk). Called after
  each process has written its part of a chunk, it is also the barrier before the commit."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.int32(flag))))


def broadcast_from_process_0(mask: np.ndarray) -> np.ndarray:
  """Process 0's value on every process: all skip the same chunks whatever they each see."""
  if jax.process_count() == 1:
    return mask
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.broadcast_one_to_all(mask)).astype(mask.dtype)
