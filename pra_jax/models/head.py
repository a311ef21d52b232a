"""The state generator head H: a small rectified-flow model of z_i given the backbone's h_i.

Dimension legend (pra_jax's table): M flattened positions (batch x patches; `sample` with
guidance runs the head on 2M rows, [cond; uncond]), T noise draws per position (flow_loss: a
vmapped axis of their own, never merged into M), Z state dims (P pixels in the direct-pixel
baseline), D backbone width (the condition h), F head width (head.width).
Flow convention: z_t = t * z + (1 - t) * eps, t = 0 is noise and t = 1 data; velocity v = z - eps.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from pra_jax import rng
from pra_jax.models import layers

PREDICTIONS = ("v", "x", "eps")
TIME_SAMPLINGS = ("uniform", "logit_normal")
SOLVERS = ("euler", "heun")  # The ODE integrators of `sample`.
# The network's x or eps prediction is turned into a velocity by dividing by (1 - t) or t; the
# clip keeps that finite at the ends of the time range.
_T_CLIP = 0.05


class AdaLNBlock(nnx.Module):
  """Residual MLP block whose LayerNorm is shifted, scaled and gated by the condition."""

  def __init__(self, w: int, *, rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.norm = layers.norm("layernorm", w, axis_name="head_width", affine=False, **kw)
    # shift, scale and gate from one kernel [3, F, F] (layers.dense_chunks).
    self.modulation = layers.dense_chunks(w, 3, w, ("head_width", "head_hidden"), zero_init=True,
                                          **kw)
    self.fc1 = layers.dense(w, w, ("head_width", "head_hidden"), **kw)
    self.fc2 = layers.dense(w, w, ("head_hidden", "head_width"), **kw)

  def __call__(self, x_MF, c_MF):
    shift, scale, gate = self.modulation(nnx.silu(c_MF))
    y = self.norm(x_MF) * (1 + scale) + shift
    return x_MF + gate * self.fc2(nnx.silu(self.fc1(y)))


class FlowHead(nnx.Module):
  """MAR-style AdaLN residual MLP: (z_t, t, h) -> prediction of v, x or eps."""

  def __init__(self, cfg, *, out_dim: int, cond_dim: int, rngs: nnx.Rngs):
    if cfg.prediction not in PREDICTIONS:
      raise ValueError(f"head.prediction must be one of {PREDICTIONS}, got {cfg.prediction!r}")
    self.cfg, self.out_dim = cfg, out_dim
    dtype, param_dtype = layers.dtype_of(cfg.dtype), layers.dtype_of(cfg.param_dtype)
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    w = cfg.width
    self.time_dim = 256
    self.time_fc1 = layers.dense(self.time_dim, w, (None, "head_width"), **kw)
    self.time_fc2 = layers.dense(w, w, ("head_hidden", "head_width"), **kw)
    self.cond_proj = layers.dense(cond_dim, w, ("backbone_width", "head_hidden"), **kw)
    self.input_proj = layers.dense(out_dim, w, ("state_dim", "head_width"), **kw)
    self.blocks = nnx.List([AdaLNBlock(w, **kw) for _ in range(cfg.depth)])
    self.final_norm = layers.norm("layernorm", w, axis_name="head_width", affine=False, **kw)
    self.final_modulation = layers.dense_chunks(w, 2, w, ("head_width", "head_hidden"),
                                                zero_init=True, **kw)
    self.out = layers.dense(w, out_dim, ("head_width", "state_dim"), zero_init=True, **kw)

  def time_embedding(self, t_M):
    """The time MLP: [M] flow times -> [M, F]."""
    rows = ("act_batch", None)
    t_emb = layers.constrain(layers.timestep_embedding(t_M, self.time_dim), rows)
    return self.time_fc2(nnx.silu(layers.constrain(self.time_fc1(t_emb), rows)))

  def __call__(self, z_t_MZ, t_M, h_MD, *, cond_MF=None, t_emb_F=None):
    """The prediction at (z_t, t) given h. A sampler passes the parts of the condition that do
    not change per row or per step, once computed: cond_MF = cond_proj(h) (fixed along a
    patch's ODE) and t_emb_F = time_embedding(t) of one row (every row shares t)."""
    rows = ("act_batch", None)  # Every activation split by rows, whatever the weights' split.
    t_emb = self.time_embedding(t_M) if t_emb_F is None else t_emb_F[None]
    c = layers.constrain(t_emb + (self.cond_proj(h_MD) if cond_MF is None else cond_MF), rows)
    x = layers.constrain(self.input_proj(z_t_MZ), rows)
    for block in self.blocks:
      x = layers.constrain(block(x, c), rows)
    shift, scale = self.final_modulation(nnx.silu(c))
    x = self.final_norm(x) * (1 + scale) + shift
    return self.out(x).astype(jnp.float32)

  def velocity(self, z_t_MZ, t_M, h_MD, **given):
    """The network's prediction expressed as a velocity, whatever it predicts (`given`: the
    precomputed condition parts of __call__)."""
    pred = self(z_t_MZ, t_M, h_MD, **given)
    t = t_M[:, None]
    if self.cfg.prediction == "v":
      return pred
    if self.cfg.prediction == "x":
      return (pred - z_t_MZ) / jnp.maximum(1.0 - t, _T_CLIP)
    return (z_t_MZ - pred) / jnp.maximum(t, _T_CLIP)


def sample_time(key, shape, cfg):
  """Training flow times: uniform, or logit-normal to spend more steps mid-trajectory."""
  if cfg.time_sampling == "uniform":
    return jax.random.uniform(key, shape)
  if cfg.time_sampling == "logit_normal":
    return jax.nn.sigmoid(cfg.logit_mean + cfg.logit_std * jax.random.normal(key, shape))
  raise ValueError(f"head.time_sampling must be one of {TIME_SAMPLINGS}, got {cfg.time_sampling!r}")


def flow_loss(head: FlowHead, target_MZ, h_MD, key):
  """Rectified-flow loss per position, averaged over `num_draws` noise draws: float32 [M].

  `key`: one key, or [M] per-position keys (pra_jax.rng); position m draws only from its own.
  """
  cfg = head.cfg
  draws = cfg.num_draws
  m = target_MZ.shape[0]
  # Several (t, eps) draws per position reuse one backbone pass: the head is cheap, the
  # backbone is not (the "diffusion batch multiplier").
  target_TMZ = jnp.broadcast_to(target_MZ, (draws,) + target_MZ.shape)
  h_TMD = jnp.broadcast_to(h_MD, (draws,) + h_MD.shape)
  keys_M2 = rng.split_each(rng.as_example_keys(key, m), 2)
  t_TM = jax.vmap(lambda k: sample_time(k, (draws,), cfg), out_axes=1)(keys_M2[:, 0])
  eps_TMZ = jax.vmap(lambda k: jax.random.normal(k, (draws, target_MZ.shape[1])),
                     out_axes=1)(keys_M2[:, 1])
  z_t = t_TM[..., None] * target_TMZ + (1.0 - t_TM[..., None]) * eps_TMZ
  h_TMD = layers.constrain(h_TMD, (None, "act_batch", None))
  # Draws vmapped, not flattened into the rows: merging T into the batch-sharded M axis has
  # no tiled sharding, so GSPMD would all-gather every data-parallel device's positions.
  v_pred = nnx.vmap(lambda hd, z, t, h: hd.velocity(z, t, h), in_axes=(None, 0, 0, 0))(
      head, z_t, t_TM, h_TMD)
  v_target = target_TMZ - eps_TMZ
  return jnp.mean(jnp.square(v_pred - v_target), axis=(0, 2))


def guided_velocity(head, h_MD, h_uncond_MD=None, cfg_scale=1.0):
  """velocity(z_MZ, t) of the head's ODE: with `h_uncond_MD`, classifier-free guidance
  v = v_u + s (v_c - v_u) from one batched head call on [cond; uncond] sharing z_t; `cfg_scale`
  a scalar or a per-position [M] array. The condition's projection is computed once for the
  whole ODE and the time MLP once per step for all rows (they share t), not once per row and
  step (benchmarks/_flops.py counts what that saves)."""
  m = h_MD.shape[0]
  guided = h_uncond_MD is not None
  h_all = jnp.concatenate([h_MD, h_uncond_MD], axis=0) if guided else h_MD
  cond_MF = head.cond_proj(h_all)
  scale = jnp.broadcast_to(jnp.asarray(cfg_scale, jnp.float32), (m,))[:, None]

  def velocity(z, t):
    t_M = jnp.full((h_all.shape[0],), t, jnp.float32)
    t_emb_F = head.time_embedding(t_M[:1])[0]
    z_all = jnp.concatenate([z, z], axis=0) if guided else z
    v = head.velocity(z_all, t_M, h_all, cond_MF=cond_MF, t_emb_F=t_emb_F)
    if not guided:
      return v
    v_c, v_u = v[:m], v[m:]
    return v_u + scale * (v_c - v_u)

  return velocity


def sample(head: FlowHead, h_MD, noise_MZ, *, num_steps: int, solver: str = "euler",
           h_uncond_MD=None, cfg_scale=1.0, t0=0.0):
  """Integrates the flow ODE from noise (t = 0) to a state (t = 1).

  With a start time `t0` > 0 the integration runs over [t0, 1] only (num_steps steps of
  (1 - t0) / num_steps), from `noise_MZ` read as the point z_t0 of a path: the coupled rollout
  baselines start it at t0 * E(x) + (1 - t0) * eps. t0 = 1 returns noise_MZ unchanged.

  With `h_uncond_MD`, classifier-free guidance mixes the conditional and unconditional
  velocities, v = v_u + s (v_c - v_u), from one batched head call on [cond; uncond] that shares
  the same z_t; `cfg_scale` may be a scalar or a per-position [M] array.
  """
  if num_steps < 1:
    raise ValueError(f"sampler num_steps must be >= 1, got {num_steps}")
  if isinstance(t0, (int, float)) and not 0.0 <= t0 <= 1.0:
    raise ValueError(f"head ODE start time t0 must be in [0, 1], got {t0}")
  velocity = guided_velocity(head, h_MD, h_uncond_MD, cfg_scale)
  dt = (1.0 - t0) / num_steps

  def euler(i, z):
    return z + dt * velocity(z, t0 + i * dt)

  def heun(i, z):  # The average of the slopes at both ends.
    t = t0 + i * dt
    v = velocity(z, t)
    v_next = velocity(z + dt * v, t + dt)
    return z + 0.5 * dt * (v + v_next)

  z = noise_MZ.astype(jnp.float32)
  if solver == "euler":
    return jax.lax.fori_loop(0, num_steps, euler, z)
  # Heun's last step falls back to Euler at t = 1, where x- and eps-predictions are least
  # stable; run as its own call, it costs one head evaluation, not two (one of which discarded).
  z = jax.lax.fori_loop(0, num_steps - 1, heun, z)
  return euler(jnp.int32(num_steps - 1), z)   # An int32 as in the loop: t to the same bits.
