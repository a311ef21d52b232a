"""What the benchmark scripts share: the repo on sys.path, timing, synthetic batches, the
train step built as train_and_evaluate builds it, and a one-line description of the machine."""

import datetime
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
  sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from pra_jax import sharding, train_step  # noqa: E402


def machine() -> str:
  """Date, device, cores and load: what a timing needs beside it to be read."""
  dev = jax.devices()[0]
  load = os.getloadavg()[0]
  date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%MZ")
  return (f"{date} {dev.platform}:{dev.device_kind} x{jax.device_count()} "
          f"cores={os.cpu_count()} load1={load:.1f}")


def config_name(flag_holder) -> str:
  from ml_collections import config_flags
  return os.path.splitext(os.path.basename(config_flags.get_config_filename(flag_holder)))[0]


def median(xs) -> float:
  return float(statistics.median(xs))


def block(tree):
  jax.block_until_ready(tree)
  return tree


def time_calls(fn, n: int, warmup: int = 1) -> list[float]:
  """Seconds of each of `n` calls of fn() (waited for), after `warmup` untimed calls."""
  for _ in range(warmup):
    block(fn())
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - t0)
  return times


def synthetic_batch(config, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
  """Random uint8 images and labels with the shapes and dtypes the data pipeline yields."""
  rng = np.random.default_rng(seed)
  d = config.data
  return {
      "image": rng.integers(0, 256, (batch, d.image_size, d.image_size, d.channels), np.uint8),
      "label": rng.integers(0, d.num_classes, (batch,), np.int32),
  }


class TrainStep:
  """train_step.train_step jitted exactly as train_and_evaluate jits it, on all local devices."""

  def __init__(self, config, state=None, graphdef=None):
    self.config = config
    self.mesh = sharding.make_mesh(config.sharding.mesh)
    if state is None:
      graphdef, state = nnx.split(train_step.create_bundle(config, self.mesh))
    self.graphdef, self.state = graphdef, state
    self.fn = train_step.jit_train_step(graphdef, state, config)
    self.step = 0
    self.compiled = None

  def with_config(self, config) -> "TrainStep":
    """The same parameters under another config of the same shapes (e.g. another input mode)."""
    return TrainStep(config, self.state, self.graphdef)

  def put(self, batch):
    with sharding.use_mesh(self.mesh):
      return sharding.global_batch(batch, self.mesh)

  def compile(self, batch) -> float:
    """Seconds to lower and compile for this batch (nothing runs); later calls reuse it."""
    t0 = time.perf_counter()
    with sharding.use_mesh(self.mesh):
      self.compiled = self.fn.lower(self.state, batch["image"], batch["label"]).compile()
    return time.perf_counter() - t0

  def __call__(self, batch):
    with sharding.use_mesh(self.mesh):
      fn = self.compiled or self.fn
      self.state, metrics = fn(self.state, batch["image"], batch["label"])
    self.step += 1
    return metrics

  def time(self, batch, n: int, warmup: int = 1) -> list[float]:
    return time_calls(lambda: self(batch), n, warmup)


def matmul_peak_sweep(sizes=(512, 1024, 2048, 3072, 4096), dtype=jnp.float32,
                      repeats: int = 3) -> dict:
  """Best FLOP/s of a square jnp.dot over several sizes, each timed alone (best of `repeats`).

  The peak for a utilisation figure: run it before anything else is built, since a product
  timed between other work reads low (on 2 CPU cores, 2048^2 interleaved with a train step
  reads ~133 GFLOP/s against 180-260 alone). Returns {'best': FLOP/s, 'size': its side,
  'rates': {side: FLOP/s}}.
  """
  dot = jax.jit(jnp.dot)
  rates = {}
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    rates[n] = 2 * n ** 3 / min(time_calls(lambda: dot(a, b), repeats, warmup=1))
    del a, b
  size = max(rates, key=rates.get)
  return {"best": rates[size], "size": size, "rates": rates}
