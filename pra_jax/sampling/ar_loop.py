"""Autoregressive generation: one compiled loop over patches with a KV cache and CFG.

Dimension legend (pra_jax's table): B images, R backbone rows (2B when guided: [cond; uncond];
else B), N patches, P pixels per patch, Z state dims (P for the direct-pixel baseline), D width.
Patch i is drawn from the head given h_i, decoded to pixels, and fed back as the next input.
Image b draws patch i's noise from fold_in(keys_B[b], i), with keys_B one key per image
(pra_jax.rng): an image is fixed by its key whatever batch, device or process it is generated in.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from pra_jax import batching, rng
from pra_jax.models import head as head_lib
from pra_jax.sampling import annealing

CFG_SCHEDULES = ("constant", "linear")


@dataclasses.dataclass(frozen=True)
class SampleSettings:
  """How the sampler draws. No defaults: sampling a trained model takes config.sample's values
  (`from_config`), the training rollouts their own fixed draw (`unguided`)."""
  num_steps: int               # Head ODE steps per patch.
  solver: str                  # One of head.SOLVERS.
  cfg: float                   # Guidance scale; 1 disables the unconditional half.
  cfg_schedule: str            # One of CFG_SCHEDULES.
  temperature: float           # Scales the head's initial noise.
  min_steps: int               # Step annealing: 0 = off (num_steps at every patch), else the
                               # head steps fall linearly to min_steps at the last patch.
  use_cache: bool = True       # False recomputes the whole prefix every step (for checks).

  def __post_init__(self):  # solver and cfg_schedule come from a checked config (config_check).
    if self.num_steps < 1 or self.temperature < 0:
      raise ValueError(f"num_steps must be >= 1 and temperature >= 0, got {self.num_steps}, "
                       f"{self.temperature}")
    if not 0 <= self.min_steps <= self.num_steps:
      raise ValueError(f"min_steps must be 0 (no annealing) or in [1, num_steps = "
                       f"{self.num_steps}], got {self.min_steps}")

  @classmethod
  def from_config(cls, sample_cfg, **overrides):
    """config.sample's settings; an override that is not None (a flag given) replaces one."""
    fields = dict(num_steps=sample_cfg.num_steps, solver=sample_cfg.solver, cfg=sample_cfg.cfg,
                  cfg_schedule=sample_cfg.cfg_schedule, temperature=sample_cfg.temperature,
                  min_steps=sample_cfg.min_steps)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return cls(**fields)

  @classmethod
  def unguided(cls, num_steps: int):
    """The training rollouts' draw (pra_jax.rollout's 'exact' mode, with rollout.head_sample_steps
    steps): Euler, no guidance, temperature 1, whatever config.sample says."""
    return cls(num_steps=num_steps, solver="euler", cfg=1.0, cfg_schedule="constant",
               temperature=1.0, min_steps=0)


def cfg_scales(settings: SampleSettings, num_patches: int, cfg=None) -> jax.Array:
  """Guidance per position: constant, or linear, 1 + (cfg - 1) i / N for patch i = 0..N-1:
  exactly 1 at the first patch (no guidance: it sees only the class), rising by (cfg - 1) / N a
  patch to 1 + (cfg - 1)(N - 1) / N at the last (the schedule of MAR-style samplers, which
  reaches cfg one step past the sequence). `cfg` (may be traced) replaces settings.cfg."""
  cfg = settings.cfg if cfg is None else cfg
  if settings.cfg_schedule == "constant":
    return jnp.full((num_patches,), cfg, jnp.float32)
  return 1.0 + (cfg - 1.0) * jnp.arange(num_patches, dtype=jnp.float32) / num_patches


def sample_patches(model, labels_B, key, settings: SampleSettings, start_BNZ=None, t0=0.0,
                   knobs=None):
  """Generates every patch of B images: returns (pixels x_BNP in [-1, 1], states g_BNZ).

  `key`: one key (images get keys 0..B-1 of it) or [B] per-image keys. With `start_BNZ` (the
  coupled 'exact' training rollout, pra_jax.rollout) patch i's head ODE runs from t0 to 1,
  started at t0 * start_BNZ[:, i] + (1 - t0) * noise: a rollout held near given states.

  `knobs` (the sweep's one compile for many points): a dict of arrays read at run time instead
  of settings' values, 'cfg' and 'temperature' float32 scalars and 'steps_N' int32 [N] head
  steps per patch. Guidance on or off (cfg == 1) stays settings' choice: it sets the rows.
  """
  b, n = labels_B.shape[0], model.num_patches
  keys_B = rng.as_example_keys(key, b)
  # The position loop is an nnx.scan with the model broadcast into it: an NNX module closed
  # over by a plain lax.scan would leak tracers into the backbone's own layer scan.
  position_scan = lambda body: nnx.scan(body, in_axes=(nnx.Carry, None, 0), out_axes=(nnx.Carry, 0))
  guided = settings.cfg != 1.0
  y = jnp.concatenate([labels_B, jnp.full_like(labels_B, model.null_class)]) if guided else labels_B
  knobs = knobs or {}
  scales_N = cfg_scales(settings, n, knobs.get("cfg"))
  temperature = knobs.get("temperature", settings.temperature)
  steps_N = knobs.get("steps_N")
  if steps_N is None and settings.min_steps:
    steps_N = annealing.steps_per_position(settings.num_steps, settings.min_steps, n)

  def head_ode(model, h_RD, noise, i):
    kw = dict(solver=settings.solver, h_uncond_MD=h_RD[b:] if guided else None,
              cfg_scale=scales_N[i], t0=t0)
    if steps_N is None:  # No annealing: the static loop, as before annealing existed.
      return head_lib.sample(model.head, h_RD[:b], noise, num_steps=settings.num_steps, **kw)
    return annealing.integrate(model.head, h_RD[:b], noise, steps_N[i], **kw)

  def draw_patch(model, h_RD, i):
    noise = temperature * jax.vmap(
        lambda k: jax.random.normal(jax.random.fold_in(k, i), (model.gen_dim,)))(keys_B)
    if start_BNZ is not None:
      noise = t0 * start_BNZ[:, i] + (1.0 - t0) * noise
    g_BZ = head_ode(model, h_RD, noise, i)
    x_BP = model.decode(g_BZ, h_RD[:b])
    # Both halves of a guided batch see the same generated patch, as at inference they must.
    x_RP = jnp.concatenate([x_BP, x_BP]) if guided else x_BP
    return x_BP, g_BZ, x_RP

  if settings.use_cache:
    h, cache = model.backbone.prefill(y, model.backbone.init_cache(y.shape[0]))

    def body(carry, model, i):
      h, cache = carry
      x_BP, g_BZ, x_RP = draw_patch(model, h, i)
      h, cache = model.backbone.step(x_RP, i, cache)
      return (h, cache), (x_BP, g_BZ)

    (h, _), (xs, gs) = position_scan(body)((h, cache), model, jnp.arange(n - 1))
  else:
    inputs = jnp.zeros((y.shape[0], n - 1, model.patch_dim), jnp.float32)

    def body(carry, model, i):
      inputs, h = carry
      x_BP, g_BZ, x_RP = draw_patch(model, h, i)
      inputs = jax.lax.dynamic_update_slice_in_dim(inputs, x_RP[:, None], i, axis=1)
      # Causal attention: the zeros after slot i cannot reach h_{i+1}.
      h = jax.lax.dynamic_index_in_dim(model.backbone(inputs, y), i + 1, axis=1, keepdims=False)
      return (inputs, h), (x_BP, g_BZ)

    h0 = model.backbone(inputs, y)[:, 0]
    (_, h), (xs, gs) = position_scan(body)((inputs, h0), model, jnp.arange(n - 1))
  x_last, g_last, _ = draw_patch(model, h, n - 1)
  x_BNP = jnp.concatenate([xs.transpose(1, 0, 2), x_last[:, None]], axis=1)
  g_BNZ = jnp.concatenate([gs.transpose(1, 0, 2), g_last[:, None]], axis=1)
  return x_BNP, g_BNZ


@nnx.jit(static_argnames=("settings",))
def _generate(model, labels_B, key, settings):
  x_BNP, _ = sample_patches(model, labels_B, key, settings)
  return model.to_images(x_BNP)


def check_labels(labels, num_classes: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"class labels must be a 1-D integer array, got {labels.dtype} "
                     f"shape {labels.shape}")
  bad = labels[(labels < 0) | (labels >= num_classes)]
  if bad.size:
    raise ValueError(f"class ids must be in [0, {num_classes}), got {sorted(set(bad.tolist()))}")
  return labels.astype(np.int32)


def generate(model, labels, key, settings: SampleSettings) -> jax.Array:
  """uint8 images [B, H, W, C] for the requested classes (compiled once per batch shape)."""
  labels = check_labels(labels, model.num_classes)
  return _generate(model, jnp.asarray(labels), key, settings)


def generate_many(model, labels: np.ndarray, key, settings, batch_size: int,
                  check_stop=None) -> np.ndarray:
  """uint8 images for any number of labels, in fixed-size batches (one compile). Image k draws
  from rng.example_keys(key, ..., first_index=k): the batch size does not change it.
  `check_stop()`, if given, runs before every batch (it raises to abandon the work)."""
  return batching.map_rows(
      lambda start, labels_B: jax.device_get(generate(
          model, labels_B, rng.example_keys(key, batch_size, first_index=start), settings)),
      batch_size, np.asarray(labels), check_stop=check_stop)
