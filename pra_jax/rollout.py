"""The backbone's training inputs: every input mode of the method's ablation in one place.

Dimension legend (pra_jax's table): B batch, N patches, I = N - 1 input positions per image,
M = B * I flattened positions, P pixels per patch, Z state dims, D width. Only patches 0..N-2
are ever inputs (the last patch is only a target).

| mode        | input at position i                          | cost                          |
| teacher     | x_i                                          | 1 pass                        |
| pixel_noise | x_i + sigma_i eps_i                          | 1 pass                        |
| recon       | G(E(x_i))                                    | 1 pass + per-patch MLPs       |
| pra         | G(E(x_i) + sigma_i eps_i)  (the method)      | same as recon                 |
| head_sample | G(z~_i), z~_i ~ H(. | h_i of a no-grad pass) | ~2 passes                     |
| exact       | G(z~_i), z~_i ~ H(. | h_i of its own inputs)  | N sequential sampling steps   |

A direct-pixel model (model.direct_pixel: the head generates the patch's pixels, no state) has no
state to decode, so only teacher and pixel_noise apply to it; with x-prediction and pixel_noise
it is the two existing fixes combined (the study's direct_x_noise).

head_sample and exact are coupled to the image ([ours], rollout.couple_t0 = t0): z~_i is the
head's ODE integrated from t0 to 1, started at t0 * E(x_i) + (1 - t0) * eps. head_sample conditions
it on h_i of a no-grad teacher-forced pass (all positions at once); exact on h_i of the model's own
previous coupled inputs (sequentially, with the KV cache), so exact is the honest sequential
version of what pra approximates in parallel. t0 = 1 gives the recon inputs G(E(x_i)); t0 = 0 is
a free sample that carries nothing of x_i, so the target E(x_i) is no longer predictable from the
inputs and the model learns to ignore its prefix.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from pra_jax import rng

from pra_jax.sampling import ar_loop
from pra_jax.models import head as head_lib

MODES = ("teacher", "pixel_noise", "recon", "pra", "head_sample", "exact")
SIGMA_LAWS = ("fixed", "uniform", "schedule")
_STATE_MODES = ("recon", "pra")


def check_config(config) -> None:
  """Rejects a mode the model cannot run or an empty sigma range, before anything compiles (each
  value alone is checked against its declaration in config_schema, by config_check)."""
  r = config.rollout
  if config.model.direct_pixel and r.mode in _STATE_MODES:
    raise ValueError(f"rollout.mode={r.mode!r} decodes a state, but model.direct_pixel=True has "
                     f"no state encoder/decoder; use one of teacher, pixel_noise, head_sample, exact")
  if not 0 <= r.sigma_min <= r.sigma_max:
    raise ValueError(f"rollout needs 0 <= sigma_min <= sigma_max, got {r.sigma_min}, {r.sigma_max}")


def draw_sigma(key, shape, rollout_cfg, step):
  """Noise level of each position under the configured law."""
  r = rollout_cfg
  if r.sigma_law == "fixed":
    return jnp.full(shape, r.sigma, jnp.float32)
  high = r.sigma_max
  if r.sigma_law == "schedule":
    ramp = jnp.clip(jnp.asarray(step, jnp.float32) / max(r.schedule_steps, 1), 0.0, 1.0)
    high = r.sigma_min + (r.sigma_max - r.sigma_min) * ramp
  return jax.random.uniform(key, shape, minval=r.sigma_min, maxval=high)


def per_position(fn, model, *arrays_BI, keys_BI):
  """Applies fn(model, *per-position values, key) independently at every (b, n) position.

  All positions run in one vmapped call: no position sees another's noise or state.
  """
  b, n = keys_BI.shape[:2]
  flat = lambda a: None if a is None else a.reshape((b * n,) + a.shape[2:])
  flat_arrays = [flat(a) for a in arrays_BI]
  in_axes = (None,) + tuple(None if a is None else 0 for a in flat_arrays) + (0,)
  out_M = nnx.vmap(fn, in_axes=in_axes)(model, *flat_arrays, flat(keys_BI))
  return out_M.reshape((b, n) + out_M.shape[1:])


def _noisy_pixels(model, x_P, key, sigma_fn):
  k_sigma, k_eps = jax.random.split(key)
  return x_P + sigma_fn(k_sigma) * jax.random.normal(k_eps, x_P.shape)


def _decoded_state(model, z_Z, h_D, key, sigma_fn):
  if sigma_fn is not None:
    k_sigma, k_eps = jax.random.split(key)
    z_Z = z_Z + sigma_fn(k_sigma) * jax.random.normal(k_eps, z_Z.shape)
  return model.decode(z_Z, h_D)


def build_inputs(model, x_BNP, z_BNZ, y_B, key, step, config):
  """Backbone inputs for patches 0..N-2 under `config.rollout.mode`: [B, N-1, P].

  `key`: one key or [B] per-example keys (pra_jax.rng). Each example's key is split into a
  stream for its per-position draws and a stream for sampled inputs, so no two draws share one.
  """
  check_config(config)  # At trace time: a state mode on a direct-pixel model must not run.
  r = config.rollout
  x_in, z_in = x_BNP[:, :-1], z_BNZ[:, :-1]
  b, i = x_in.shape[:2]
  keys_B2 = rng.split_each(rng.as_example_keys(key, b), 2)
  keys_BI = rng.split_each(keys_B2[:, 0], i)      # One key per input position.
  sample_keys_B = keys_B2[:, 1]                   # head_sample / exact: the sampled inputs.

  if r.mode == "teacher":
    out = x_in
  elif r.mode == "pixel_noise":
    sigma_fn = lambda k: r.pixel_sigma * draw_sigma(k, (), r, step)
    out = per_position(lambda m, x, k: _noisy_pixels(m, x, k, sigma_fn), model, x_in,
                       keys_BI=keys_BI)
  elif r.mode in _STATE_MODES:
    # A context-aware decoder reads h_i, which at inference comes from the step that generated
    # patch i; here it comes from a no-grad teacher-forced pass (one extra backbone pass).
    h_ctx = (jax.lax.stop_gradient(model.backbone(x_in, y_B))[:, :-1]
             if model.decoder_uses_context else None)
    sigma_fn = (lambda k: draw_sigma(k, (), r, step)) if r.mode == "pra" else None
    out = per_position(lambda m, z, h, k: _decoded_state(m, z, h, k, sigma_fn), model,
                       jax.lax.stop_gradient(z_in) if r.stop_gradient else z_in, h_ctx,
                       keys_BI=keys_BI)
  elif r.mode == "head_sample":
    h_tf = jax.lax.stop_gradient(model.backbone(x_in, y_B))[:, :-1]
    noise = jax.vmap(lambda k: jax.random.normal(k, (model.gen_dim,)))(
        rng.split_each(sample_keys_B, i).reshape(b * i))
    start = r.couple_t0 * jax.lax.stop_gradient(z_in).reshape(b * i, -1) \
        + (1.0 - r.couple_t0) * noise
    g = head_lib.sample(model.head, h_tf.reshape(b * i, -1), start,
                        num_steps=r.head_sample_steps, solver="euler", t0=r.couple_t0)
    out = model.decode(g.reshape(b, i, -1), h_tf)
  elif r.mode == "exact":
    settings = ar_loop.SampleSettings.unguided(r.head_sample_steps)
    # The states of the last patch are never an input: its start is never read.
    out, _ = ar_loop.sample_patches(model, y_B, sample_keys_B, settings,
                             start_BNZ=jax.lax.stop_gradient(z_BNZ), t0=r.couple_t0)
    out = out[:, :-1]
  else:
    raise ValueError(f"rollout.mode must be one of {MODES}, got {r.mode!r}")
  # Sampled inputs never carry gradient; decoded ones do only if stop_gradient is off.
  if r.stop_gradient or r.mode in ("head_sample", "exact"):
    out = jax.lax.stop_gradient(out)
  return out
