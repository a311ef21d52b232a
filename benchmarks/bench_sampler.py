"""Sampling time with the KV cache against full recomputation, and per-token step time over the
sequence (first vs last quarter of positions, which the cache should keep flat).

  python benchmarks/bench_sampler.py --config=benchmarks/mid.py

Both totals time sampler.rollout to uint8 images as sampler.generate runs it (one compiled loop
over all positions, compiled ahead of time and excluded). The per-token times come from the
same work done one position per call: a KV-cached backbone step, the head's ODE (with CFG when
sample.cfg != 1) and the pixel decoder. Prints one line.
"""

import dataclasses
import time

import _common as C  # Puts the repository on sys.path.
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from pra_jax import sampler
from pra_jax.models import head as head_lib
from pra_jax.models import pra

_CONFIG = config_flags.DEFINE_config_file("config", "benchmarks/mid.py", "Config to time.")
_QUICK = flags.DEFINE_bool("quick", False, "One repeat of each (for the tests).")
_BATCH = flags.DEFINE_integer("batch", 1, "Images per sampling call.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls of the KV-cached sampler.")
_FULL = flags.DEFINE_integer("full_repeats", 1, "Timed calls of the full-recompute sampler.")

FLAT_TARGET = 1.5


def compiled_sampler(model, labels, key, settings):
  """sampler.rollout to uint8 images, as sampler.generate runs it, compiled before any call."""
  graphdef, state = nnx.split(model)

  def generate(state, labels):
    m = nnx.merge(graphdef, state)
    return m.to_images(sampler.rollout(m, labels, key, settings)[0])

  labels = jnp.asarray(sampler.check_labels(labels, model.num_classes))
  compiled = jax.jit(generate).lower(state, labels).compile()
  return lambda: compiled(state, labels)


def per_token_times(model, labels, settings, key) -> tuple[list[float], list[float]]:
  """Seconds of each position's step (backbone step with cache + head ODE + decoder), for the
  first and the last quarter of positions."""
  graphdef, state = nnx.split(model)
  b = labels.shape[0]
  guided = settings.cfg != 1.0
  scales = sampler.cfg_scales(settings, model.num_patches)

  @jax.jit
  def token(state, x_GP, i, cache):
    m = nnx.merge(graphdef, state)
    h, cache = m.backbone.step(x_GP, i, cache)
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
  model = pra.create_model(config)
  labels = np.arange(_BATCH.value, dtype=np.int32) % config.data.num_classes
  settings = sampler.SampleSettings.from_config(config.sample)
  key = jax.random.key(0)

  total = {}
  for use_cache in (True, False):
    run = compiled_sampler(model, labels, key, dataclasses.replace(settings, use_cache=use_cache))
    # Compiled ahead of time, so no untimed warm-up run of the (slow) full recomputation.
    total[use_cache] = C.median(C.time_calls(run, repeats if use_cache else _FULL.value, 0))
  first, last = (C.median(t) for t in per_token_times(model, jnp.asarray(labels), settings, key))
  ratio = max(last / first, first / last)
  verdict = "met" if ratio <= FLAT_TARGET else "MISSED"
  print(f"bench_sampler | {C.machine()} | config={C.config_name(flags.FLAGS['config'])} "
        f"tokens={model.num_patches} batch={_BATCH.value} cfg={settings.cfg:g} "
        f"head_steps={settings.num_steps} | kv-cache {total[True]:.3f} s, full recompute "
        f"{total[False]:.3f} s: {total[False] / total[True]:.1f}x | per token first quarter "
        f"{first * 1e3:.2f} ms, last quarter {last * 1e3:.2f} ms: {last / first:.2f}x "
        f"(target flat within {FLAT_TARGET}x {verdict})", flush=True)


if __name__ == "__main__":
  app.run(main)
