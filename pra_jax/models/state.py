"""State encoder E (patch -> z) and pixel decoder G (z -> patch), applied per patch.

Dimension legend (pra_jax's table): M positions (any leading axes: [B, N] or one flattened axis),
P pixels per patch, Z state dims, D backbone width (the optional decoder context); the networks'
hidden width F is state.width.
"""

import jax.numpy as jnp
from flax import nnx

from pra_jax.models import layers

STATE_NORMS = ("layernorm", "tanh", "none")


def project_state(z_MZ, norm_kind: str):
  """The nearest state of the set E can output under `norm_kind` (float32).

  layernorm: zero mean, unit RMS over the Z dims of each patch; tanh: clipped to [-1, 1];
  none: unchanged. Idempotent (to float32 rounding) on the encoder's own states.
  """
  z = z_MZ.astype(jnp.float32)
  if norm_kind == "layernorm":
    z = z - z.mean(-1, keepdims=True)
    return z * jnp.reciprocal(jnp.sqrt(jnp.mean(jnp.square(z), -1, keepdims=True) + 1e-6))
  if norm_kind == "tanh":
    return jnp.clip(z, -1.0, 1.0)
  if norm_kind == "none":
    return z
  raise ValueError(f"state.norm must be one of {STATE_NORMS}, got {norm_kind!r}")


class ResMlpBlock(nnx.Module):
  def __init__(self, w: int, *, rngs, dtype, param_dtype):
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.norm = layers.norm("layernorm", w, axis_name="state_width", **kw)
    self.fc1 = layers.dense(w, w, ("state_width", "state_hidden"), **kw)
    self.fc2 = layers.dense(w, w, ("state_hidden", "state_width"), **kw)

  def __call__(self, x):
    return x + self.fc2(nnx.silu(self.fc1(self.norm(x))))


class StateEncoder(nnx.Module):
  """x_i -> z_i. The output is normalised so the flow head's target keeps a fixed scale."""

  def __init__(self, cfg, *, patch_dim: int, rngs: nnx.Rngs):
    if cfg.norm not in STATE_NORMS:
      raise ValueError(f"state.norm must be one of {STATE_NORMS}, got {cfg.norm!r}")
    kw = dict(rngs=rngs, dtype=layers.dtype_of(cfg.dtype),
              param_dtype=layers.dtype_of(cfg.param_dtype))
    self.norm_kind = cfg.norm
    self.inp = layers.dense(patch_dim, cfg.width, ("patch_pixels", "state_width"), **kw)
    self.blocks = nnx.List([ResMlpBlock(cfg.width, **kw) for _ in range(cfg.depth)])
    self.out_norm = layers.norm("layernorm", cfg.width, axis_name="state_width", **kw)
    self.out = layers.dense(cfg.width, cfg.dim, ("state_width", "state_dim"), **kw)

  def __call__(self, x_MP):
    h = self.inp(x_MP)
    for block in self.blocks:
      h = block(h)
    z = self.out(self.out_norm(h)).astype(jnp.float32)
    if self.norm_kind == "tanh":
      return jnp.tanh(z)
    # layernorm: zero mean, unit variance over the Z dims of each patch, the scale the flow
    # head's unit-Gaussian noise and the PRA noise levels are measured against.
    return project_state(z, self.norm_kind)


class PixelDecoder(nnx.Module):
  """z_i (and optionally h_i, for context-aware decoding) -> x_i in pixel space.

  With `state.project` the decoder first projects its input onto the set of states E outputs
  (`project_state`): G is trained on exactly normalised states, and a noised training input
  (pra) or a sampled, CFG-extrapolated state would otherwise reach it off that set. Every
  decode goes through here, so training inputs, the reconstruction loss and sampling see the
  same projection.
  """

  def __init__(self, cfg, *, patch_dim: int, context_dim: int, rngs: nnx.Rngs):
    kw = dict(rngs=rngs, dtype=layers.dtype_of(cfg.dtype),
              param_dtype=layers.dtype_of(cfg.param_dtype))
    self.project_kind = cfg.norm if cfg.project else "none"
    self.inp = layers.dense(cfg.dim, cfg.width, ("state_dim", "state_width"), **kw)
    self.context = (layers.dense(context_dim, cfg.width, ("backbone_width", "state_width"), **kw)
                    if cfg.decoder_context else None)
    self.blocks = nnx.List([ResMlpBlock(cfg.width, **kw) for _ in range(cfg.depth)])
    self.out_norm = layers.norm("layernorm", cfg.width, axis_name="state_width", **kw)
    self.out = layers.dense(cfg.width, patch_dim, ("state_width", "patch_pixels"), **kw)

  @property
  def uses_context(self) -> bool:
    return self.context is not None

  def __call__(self, z_MZ, h_MD=None):
    h = self.inp(project_state(z_MZ, self.project_kind))
    if self.context is not None:
      if h_MD is None:
        raise ValueError("state.decoder_context is on: the pixel decoder needs the backbone "
                         "output h as well as z")
      h = h + self.context(h_MD)
    for block in self.blocks:
      h = block(h)
    return self.out(self.out_norm(h)).astype(jnp.float32)
