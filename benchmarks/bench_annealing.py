"""Step annealing's two loop forms, timed: the head ODE of every position of B images, with CFG,
as the sampler runs it inside its position scan (the backbone, identical in all, left out).

  python benchmarks/bench_annealing.py --config=configs/demo.py --min_steps=4

Rows: head.sample's static loop of num_steps at every patch (annealing off, today's path);
annealing.integrate's 'while' loop at num_steps everywhere (the price of a traced count); then
the annealed schedule (num_steps -> min_steps) in the 'while' and the 'masked' form. Random
weights: the ODE's cost does not depend on what the weights are. Prints one line per row.
"""

import _common as C  # Puts the repository on sys.path.
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags

from pra_jax.models import head as head_lib
from pra_jax.models import pra
from pra_jax.sampling import annealing

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Config to time.")
_BATCH = flags.DEFINE_integer("batch", 64, "Images per call.")
_MIN_STEPS = flags.DEFINE_integer("min_steps", 4, "The annealed schedule's last-patch steps.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed calls per row (the median is printed).")
_QUICK = flags.DEFINE_bool("quick", False, "One timed call per row (for the tests).")


def head_scan(model, width: int, num_patches: int, batch: int, solver: str, steps_N, form: str, max_steps):
  """A compiled fn() running the head ODE for every position under one scan, CFG on."""
  graphdef, state = nnx.split(model.head)
  rng = np.random.default_rng(0)
  h_NRD = jnp.asarray(rng.standard_normal((num_patches, 2 * batch, width)), jnp.float32)
  noise_NBZ = jnp.asarray(rng.standard_normal((num_patches, batch, model.gen_dim)), jnp.float32)
  steps_N = jnp.asarray(steps_N, jnp.int32)

  def run(state, h_NRD, noise_NBZ, steps_N):
    head = nnx.merge(graphdef, state)

    def body(_, xs):
      h_RD, noise_BZ, n = xs
      kw = dict(solver=solver, h_uncond_MD=h_RD[batch:], cfg_scale=2.0)
      if form == "static":
        return None, head_lib.sample(head, h_RD[:batch], noise_BZ, num_steps=max_steps, **kw)
      return None, annealing.integrate(head, h_RD[:batch], noise_BZ, n, loop=form,
                                       max_steps=max_steps, **kw)

    return jax.lax.scan(body, None, (h_NRD, noise_NBZ, steps_N))[1]

  compiled = jax.jit(run).lower(state, h_NRD, noise_NBZ, steps_N).compile()
  return lambda: compiled(state, h_NRD, noise_NBZ, steps_N)


def main(argv):
  del argv
  config = _CONFIG.value
  model = pra.abstract_model(config)
  graphdef, abstract = nnx.split(model)
  key = iter(jax.random.split(jax.random.key(0), 10_000))
  # Random weights: the ODE's cost does not depend on their values.
  state = jax.tree.map(lambda x: 0.05 * jax.random.normal(next(key), x.shape, x.dtype), abstract)
  model = nnx.merge(graphdef, state)
  n, b, steps, lo = model.num_patches, _BATCH.value, config.sample.num_steps, _MIN_STEPS.value
  annealed = np.asarray(annealing.steps_per_position(steps, lo, n))
  flat = np.full((n,), steps)
  cells = []
  for solver in head_lib.SOLVERS:
    rows = (("static (off)", flat, "static"), ("while, flat", flat, "while"),
            ("while, annealed", annealed, "while"), ("masked, annealed", annealed, "masked"))
    for name, steps_N, form in rows:
      fn = head_scan(model, config.model.backbone.width, n, b, solver, steps_N, form, steps)
      ms = 1e3 * C.median(C.time_calls(fn, 1 if _QUICK.value else _REPEATS.value))
      cells.append(f"{solver} {name} {ms:.1f} ms ({b / ms * 1e3:.1f} images/s)")
  # One line, as every benchmark prints: the head ODE alone, per call of `b` images.
  print(f"bench_annealing | {C.machine()} | {n} patches, batch {b}, CFG on, num_steps {steps}, "
        f"annealed {steps}->{lo} ({annealed.sum()} of {flat.sum()} steps) | "
        + "; ".join(cells))

if __name__ == "__main__":
  app.run(main)
