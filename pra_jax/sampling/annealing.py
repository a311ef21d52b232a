"""Step annealing: fewer head ODE steps for later patches, whose prefix constrains them more.

Dimension legend (pra_jax's table): N patches, M rows of the head (one per image), Z state dims,
D backbone width.

Patch i gets steps_N[i] head steps, falling linearly from `num_steps` at the first patch to
`min_steps` at the last (rounded to the nearest integer). The step count depends on the
position alone and the ODE is deterministic, so an image still depends only on its key.

`integrate` is head.sample with a step count that is a traced integer: the position loop is
one compiled scan, so the count of patch i is read inside it. Two loop forms are kept because
they trade differently per platform (benchmarks/bench_annealing.py measures them):
  'while'   a while_loop of exactly n steps: no wasted head calls;
  'masked'  a fixed loop of `max_steps` steps, the ones past n computed and discarded: the
            same control flow at every position (what batched accelerators may prefer).
"""

import jax
import jax.numpy as jnp

from pra_jax.models import head as head_lib

LOOPS = ("while", "masked")
DEFAULT_LOOP = "while"  # Measured faster on CPU (README, "Step annealing"): masked steps cost.


def steps_per_position(num_steps, min_steps, num_patches: int) -> jax.Array:
  """int32 [N]: the head steps of each patch, linear from num_steps (patch 0) to min_steps
  (patch N-1). Either bound may be traced (the sweep passes them at run time)."""
  frac_N = jnp.arange(num_patches, dtype=jnp.float32) / max(num_patches - 1, 1)
  hi = jnp.asarray(num_steps, jnp.float32)
  lo = jnp.asarray(min_steps, jnp.float32)
  return jnp.round(hi + (lo - hi) * frac_N).astype(jnp.int32)


def head_evaluations(num_steps: int, min_steps: int, num_patches: int, solver: str) -> int:
  """Head network calls per image (CFG doubles the rows of each call, not the calls): Euler one
  per step, Heun two per step but one on each patch's last; min_steps 0 (no annealing) is
  num_steps at every patch, as head.sample's static loop runs it."""
  steps = int(jnp.sum(steps_per_position(num_steps, min_steps or num_steps, num_patches)))
  return 2 * steps - num_patches if solver == "heun" else steps


def integrate(head, h_MD, noise_MZ, num_steps, *, solver: str = "euler", h_uncond_MD=None,
              cfg_scale=1.0, t0=0.0, loop: str = DEFAULT_LOOP, max_steps: int | None = None):
  """head.sample's ODE from t0 to 1 in `num_steps` Euler or Heun steps, num_steps a traced int32
  scalar (>= 1). loop='masked' runs max_steps (static, >= num_steps) iterations instead."""
  if solver not in head_lib.SOLVERS:
    raise ValueError(f"sampler solver must be one of {head_lib.SOLVERS}, got {solver!r}")
  if loop not in LOOPS:
    raise ValueError(f"annealing loop must be one of {LOOPS}, got {loop!r}")
  if loop == "masked" and max_steps is None:
    raise ValueError("loop='masked' needs a static max_steps")
  n = jnp.maximum(jnp.asarray(num_steps, jnp.int32), 1)
  velocity = head_lib.guided_velocity(head, h_MD, h_uncond_MD, cfg_scale)

  dt = (1.0 - t0) / n.astype(jnp.float32)

  def step(i, z):
    t = t0 + i * dt
    v = velocity(z, t)
    z_euler = z + dt * v
    if solver == "euler":
      return z_euler
    # Heun, as head.sample: the last step is Euler's, so its second evaluation is skipped here.
    return jax.lax.cond(i == n - 1, lambda: z_euler,
                        lambda: z + 0.5 * dt * (v + velocity(z_euler, t + dt)))

  z0 = noise_MZ.astype(jnp.float32)
  if loop == "while":
    return jax.lax.fori_loop(0, n, step, z0)
  return jax.lax.fori_loop(0, max_steps, lambda i, z: jnp.where(i < n, step(i, z), z), z0)
