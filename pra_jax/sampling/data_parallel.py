"""Sampling data-parallel over every device of every process: the mesh, the weights replicated
on it, and one compiled generator that maps global image indices to images.

Image k draws from fold_in(key(seed), k) alone (what rng.example_keys gives index k), so the
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


class DataParallelGenerator:
  """Images by global index on every device of `mesh`, compiled once for one global batch.

  A call is a global batch of B = per_device_batch x devices indices; device d generates its
  slice of them with ar_loop.sample_patches under shard_map, from its own copy of the model. Image
  k draws from fold_in(key(seed), k), which is rng.example_keys(key(seed), ..., first_index=k):
  the batch, device and process it lands in do not change it.
  """

  def __init__(self, model, mesh, settings: ar_loop.SampleSettings, seed: int,
               per_device_batch: int, runtime_knobs: bool = False):
    """runtime_knobs: cfg, temperature and the head steps per patch are arguments of each
    `dispatch` (ar_loop.sample_patches's knobs), so one compile serves every value of them (the
    sweep); settings then fix only the solver, the cfg schedule and whether guidance is on."""
    graphdef, state = nnx.split(model)
    self.mesh, self.batch = mesh, per_device_batch * mesh.size
    self.settings, self.runtime_knobs = settings, runtime_knobs
    self.num_patches = model.num_patches
    self.batch_sharding = sharding.batch_sharding(mesh)
    self.state = self.place(state)

    def local(state, labels_b, index_b, knobs):
      # No logical axis rules in context here, so the model's activation constraints are no-ops
      # (inside shard_map every array is already one device's).
      m = nnx.merge(graphdef, state)
      keys_b = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(seed), index_b)
      x_BNP, _ = ar_loop.sample_patches(m, labels_b, keys_b, settings, knobs=knobs)
      return m.to_images(x_BNP)

    spec = P(BATCH_AXES)
    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(), spec, spec, P()), out_specs=spec,
                               check_vma=False))
    arg = lambda dtype: jax.ShapeDtypeStruct((self.batch,), dtype, sharding=self.batch_sharding)
    t0 = time.perf_counter()
    self.compiled = fn.lower(self.state, arg(np.int32), arg(np.uint32),
                             self._knobs(settings)).compile()
    self.compile_s = time.perf_counter() - t0

  def place(self, state):
    """A model state (e.g. another EMA of the same run) replicated on the mesh."""
    placed = sharding.replicated(self.mesh)
    if any(x.sharding != placed for x in jax.tree.leaves(state)):
      state = jax.jit(lambda s: s, out_shardings=placed)(state)
    return state

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

  def dispatch(self, index_B: np.ndarray, labels_B: np.ndarray, settings=None) -> jax.Array:
    """Starts one global batch; every process passes the same [G] numpy arrays. With
    runtime_knobs, `settings` (default: the compiled ones) gives this batch's knobs."""
    put = lambda a: jax.make_array_from_callback(a.shape, self.batch_sharding, lambda i: a[i])
    return self.compiled(self.state, put(labels_B.astype(np.int32)),
                         put(index_B.astype(np.uint32)), self._knobs(settings or self.settings))

  @staticmethod
  def local_rows(images_B, index_B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(index_X, images_X): the rows of a batch that this process's devices hold, each once."""
    index, images = [], []
    for shard in images_B.addressable_shards:
      if shard.replica_id == 0:
        index.append(index_B[shard.index[0]])
        images.append(np.asarray(shard.data))
    return np.concatenate(index), np.concatenate(images)


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
