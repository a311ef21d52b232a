"""Sampling time with the KV cache against full recomputation, per-token step time over the
sequence (first vs last quarter of positions, which the cache should keep flat), and
throughput at a batch that fills the machine, with its FLOP utilisation.

  python benchmarks/bench_sampler.py --config=benchmarks/mid.py

Both totals time ar_loop.sample_patches to uint8 images as ar_loop.generate runs it (one compiled
loop over all positions, compiled ahead of time and excluded). The per-token times come from the
same work done one position per call: a KV-cached backbone step, the head's ODE (with CFG when
sample.cfg != 1) and the pixel decoder. Throughput runs what python -m pra_jax.sample runs (the
data-parallel generator over every local device) at --throughput_batch images per call; its
utilisation divides the analytic FLOPs of `sampler_flops` by the best rate of a standalone
jnp.dot sweep, measured first, before anything else has run in the process. Prints one line.
"""

import copy
import dataclasses
import time

import _common as C  # Puts the repository on sys.path.
import _flops
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from pra_jax import rng
from pra_jax.sampling import ar_loop, data_parallel
from pra_jax.models import head as head_lib
from pra_jax.models import layers
from pra_jax.models import pra

_CONFIG = config_flags.DEFINE_config_file("config", "benchmarks/mid.py", "Config to time.")
_QUICK = flags.DEFINE_bool("quick", False, "One repeat of each (for the tests).")
_BATCH = flags.DEFINE_integer("batch", 1, "Images per sampling call.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls of the KV-cached ar_loop.")
_FULL = flags.DEFINE_integer("full_repeats", 1, "Timed calls of the full-recompute ar_loop.")
_THROUGHPUT_BATCH = flags.DEFINE_integer("throughput_batch", 64,
                                         "Images per call for the throughput figure.")
_ONLY_THROUGHPUT = flags.DEFINE_bool(
    "only_throughput", False, "Only the throughput at --throughput_batch and its utilisation "
    "(skips the cache-vs-recompute and per-token timings, minutes of a CPU on mid).")

FLAT_TARGET = 1.5


def compiled_sampler(model, labels, key, settings):
  """ar_loop.sample_patches to uint8 images, as ar_loop.generate runs it, compiled up front."""
  graphdef, state = nnx.split(model)

  def generate(state, labels):
    m = nnx.merge(graphdef, state)
    return m.to_images(ar_loop.sample_patches(m, labels, key, settings)[0])

  labels = jnp.asarray(ar_loop.check_labels(labels, model.num_classes))
  compiled = jax.jit(generate).lower(state, labels).compile()
  return lambda: compiled(state, labels)


def sampler_matmul_peak(dtype, sizes=(512, 1024, 2048), repeats: int = 5) -> tuple[float, int]:
  """(FLOP/s, n) of the fastest square jnp.dot over `sizes`: the denominator of utilisation.

  Run before anything else in the process: a product timed after big programs have run reads
  far lower than alone (about half, by the ECOSYSTEM notes' measurement on this machine).
  """
  best, best_n = 0.0, sizes[0]
  for n in sizes:
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    dot = jax.jit(jnp.dot)
    rate = 2 * n ** 3 / min(C.time_calls(lambda: dot(a, b), repeats, warmup=1))
    if rate > best:
      best, best_n = rate, n
  return best, best_n


def sampler_flops(config, settings: ar_loop.SampleSettings) -> dict[str, float]:
  """Analytic FLOPs of generating one image with these settings (benchmarks/_flops.py)."""
  return _flops.sample_flops(config, num_steps=settings.num_steps, solver=settings.solver,
                             cfg=settings.cfg, min_steps=settings.min_steps)


def xla_position_flops(config, settings: ar_loop.SampleSettings) -> tuple[float, float]:
  """(XLA's, analytic) FLOPs of one position for one image with one head ODE step: a cached
  backbone step, one head velocity evaluation and the decoder, compiled from abstract weights
  with the layer stack unrolled (XLA's cost analysis counts a loop body once)."""
  config = copy.deepcopy(config)
  config.model.backbone.scan_layers = False
  one = dataclasses.replace(settings, num_steps=1, solver="euler")
  graphdef, state = nnx.split(pra.abstract_model(config))
  state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)  # No mesh.
  guided = one.cfg != 1.0
  rows = 2 if guided else 1

  def position(state, x_RP, cache):
    m = nnx.merge(graphdef, state)
    h, cache = m.backbone.step(x_RP, jnp.int32(m.num_patches // 2), cache)
    g = head_lib.sample(m.head, h[:1], jnp.zeros((1, m.gen_dim)), num_steps=1,
                        h_uncond_MD=h[1:] if guided else None, cfg_scale=one.cfg)
    return m.decode(g, h[:1]), cache

  model = nnx.merge(graphdef, state)
  cache = jax.eval_shape(lambda: model.backbone.init_cache(rows))
  x = jax.ShapeDtypeStruct((rows, model.patch_dim), jnp.float32)
  cost = jax.jit(position).lower(state, x, cache).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  f = sampler_flops(config, one)
  n = model.num_patches
  tokens = config.model.backbone.num_class_tokens + n - 1
  # Per position: one backbone token (the input projection is spread over the N - 1 steps).
  analytic = f["backbone"] / tokens + (f["head"] + f["decoder"]) / n
  return float(cost.get("flops", float("nan"))), analytic


def throughput(model, config, settings, batch: int, repeats: int) -> tuple[float, float, int]:
  """(images/s, seconds per call, batch) of the data-parallel generator at `batch` images per
  call (rounded up to a multiple of the local device count), compiled before timing."""
  mesh = data_parallel.sampling_mesh(jax.local_devices())
  generator = data_parallel.DataParallelGenerator(model, mesh, settings, -(-batch // mesh.size))
  key = rng.stream(0, "sample")
  index = np.arange(generator.batch)
  labels = (index % config.data.num_classes).astype(np.int32)
  seconds = C.median(C.time_calls(lambda: generator.dispatch(index, labels, key), repeats,
                                  warmup=0))
  return generator.batch / seconds, seconds, generator.batch


def per_token_times(model, labels, settings, key) -> tuple[list[float], list[float]]:
  """Seconds of each position's step (backbone step with cache + head ODE + decoder), for the
  first and the last quarter of positions."""
  graphdef, state = nnx.split(model)
  b = labels.shape[0]
  guided = settings.cfg != 1.0
  scales = ar_loop.cfg_scales(settings, model.num_patches)

  @jax.jit
  def token(state, x_RP, i, cache):
    m = nnx.merge(graphdef, state)
    h, cache = m.backbone.step(x_RP, i, cache)
    noise = jax.random.normal(jax.random.fold_in(key, i), (b, m.gen_dim))
    g = head_lib.sample(m.head, h[:b], noise, num_steps=settings.num_steps,
                        solver=settings.solver, h_uncond_MD=h[b:] if guided else None,
                        cfg_scale=scales[i + 1])
    x = m.decode(g, h[:b])
    return (jnp.concatenate([x, x]) if guided else x), cache

  @jax.jit
  def prefill(state, y):
    m = nnx.merge(graphdef, state)
    _, cache = m.backbone.prefill(y, m.backbone.init_cache(y.shape[0]))
    return cache

  y = jnp.concatenate([labels, jnp.full_like(labels, model.null_class)]) if guided else labels

  cache = prefill(state, y)
  x = jnp.zeros((y.shape[0], model.patch_dim), jnp.float32)
  for i in range(model.num_patches - 1):  # A real rollout: compiles, fills the cache.
    x, cache = token(state, x, jnp.int32(i), cache)
  C.block(cache)

  # A step's cost does not depend on what the cache holds, so positions are timed on the full
  # cache in alternating order (first quarter, last quarter, ...): load that drifts during the
  # run falls on both quarters alike instead of on whichever ran first.
  n = model.num_patches - 1
  q = max(n // 4, 1)
  order = [i for pair in zip(range(q), range(n - q, n)) for i in pair]
  times = {}
  for _ in range(2):
    for i in order:
      t0 = time.perf_counter()
      C.block(token(state, x, jnp.int32(i), cache))
      times.setdefault(i, []).append(time.perf_counter() - t0)
  return ([C.median(times[i]) for i in range(q)],
          [C.median(times[i]) for i in range(n - q, n)])


def main(argv):
  del argv
  config = _CONFIG.value
  repeats = 1 if _QUICK.value else _REPEATS.value
  # The peak first, before any other program has run in this process.
  peak, peak_n = sampler_matmul_peak(layers.dtype_of(config.model.backbone.dtype),
                                     (256, 512) if _QUICK.value else (512, 1024, 2048))
  model = pra.create_model(config)
  labels = np.arange(_BATCH.value, dtype=np.int32) % config.data.num_classes
  settings = ar_loop.SampleSettings.from_config(config.sample)
  key = jax.random.key(0)

  latency = ""
  if not _ONLY_THROUGHPUT.value:
    total = {}
    for use_cache in (True, False):
      run = compiled_sampler(model, labels, key,
                             dataclasses.replace(settings, use_cache=use_cache))
      # Compiled ahead of time, so no untimed warm-up run of the (slow) full recomputation.
      total[use_cache] = C.median(C.time_calls(run, repeats if use_cache else _FULL.value, 0))
    first, last = (C.median(t) for t in per_token_times(model, jnp.asarray(labels), settings,
                                                         key))
    verdict = "met" if max(last / first, first / last) <= FLAT_TARGET else "MISSED"
    latency = (f"batch={_BATCH.value} | kv-cache {total[True]:.3f} s, full recompute "
               f"{total[False]:.3f} s: {total[False] / total[True]:.1f}x | per token first "
               f"quarter {first * 1e3:.2f} ms, last quarter {last * 1e3:.2f} ms: "
               f"{last / first:.2f}x (target flat within {FLAT_TARGET}x {verdict}) | ")
  images_per_s, call_s, batch = throughput(model, config, settings, _THROUGHPUT_BATCH.value,
                                           repeats)
  flops = sampler_flops(config, settings)
  xla_position, analytic_position = xla_position_flops(config, settings)
  achieved = flops["total"] * images_per_s
  print(f"bench_sampler | {C.machine()} | config={C.config_name(flags.FLAGS['config'])} "
        f"tokens={model.num_patches} cfg={settings.cfg:g} head_steps={settings.num_steps} "
        f"{settings.solver} | {latency}throughput at batch {batch}: "
        f"{images_per_s:.3g} images/s ({call_s:.2f} s per call), "
        f"{flops['total'] / 1e9:.3g} GFLOP/image (backbone {flops['backbone'] / 1e9:.3g}, head "
        f"{flops['head'] / 1e9:.3g}, decoder {flops['decoder'] / 1e9:.3g}; one position "
        f"{analytic_position / 1e6:.4g} MFLOP vs XLA cost_analysis {xla_position / 1e6:.4g}: "
        f"{xla_position / analytic_position:.3f}x) = "
        f"{achieved / 1e9:.3g} GFLOP/s: FLOP utilisation {achieved / peak:.0%} of the "
        f"standalone jnp.dot peak {peak / 1e9:.3g} GFLOP/s (best of a sweep, at {peak_n}^2)",
        flush=True)

if __name__ == "__main__":
  app.run(main)
