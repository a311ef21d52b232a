"""Building blocks shared by the backbone, the flow head and the state networks.

Dimension legend (pra_jax's table): B batch, L tokens, M flattened positions, D width, A heads,
K head dim.
"""

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from pra_jax import sharding

# The mapping from logical names to mesh axes lives beside the table, in pra_jax.sharding; the
# model code (attention.py included) reaches it through this module.
logical_spec = sharding.logical_spec

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
DTYPE_NAMES = tuple(DTYPES)  # The allowed values of every *.dtype / *.param_dtype field.
NORMS = ("rmsnorm", "layernorm")
MLP_TYPES = ("swiglu", "gelu")


def dtype_of(name: str):
  if name not in DTYPE_NAMES:
    raise ValueError(f"dtype must be one of {DTYPE_NAMES}, got {name!r}")
  return DTYPES[name]


def partitioned(init, axes: Sequence[str | None]):
  """`init` whose parameters carry logical axis names: the one way pra_jax annotates a parameter
  (Flax maps the names to mesh axes when the parameter is born under sharding.use_mesh)."""
  return nnx.with_partitioning(init, tuple(axes))


def param(init, shape: Sequence[int], axes: Sequence[str | None], *, rngs: nnx.Rngs,
          param_dtype=jnp.float32) -> nnx.Param:
  """A free-standing parameter (not inside a Flax layer), annotated like every other."""
  return nnx.Param(partitioned(init, axes)(rngs.params(), tuple(shape), param_dtype))


def dense(in_features: int, out_features: int, axes: Sequence[str | None], *, rngs: nnx.Rngs,
          dtype=jnp.float32, param_dtype=jnp.float32, use_bias: bool = True,
          zero_init: bool = False) -> nnx.Linear:
  """A Linear layer whose kernel and bias carry logical names (pra_jax.sharding's table)."""
  kernel_init = nnx.initializers.zeros_init() if zero_init else nnx.initializers.xavier_uniform()
  return nnx.Linear(
      in_features, out_features, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
      kernel_init=partitioned(kernel_init, axes),
      bias_init=partitioned(nnx.initializers.zeros_init(), (axes[-1],)),
      rngs=rngs)


def dense_chunks(in_features: int, num_chunks: int, out_features: int,
                 axes: Sequence[str | None], *, rngs: nnx.Rngs, dtype=jnp.float32,
                 param_dtype=jnp.float32, zero_init: bool = False) -> nnx.Einsum:
  """`num_chunks` Linear maps of one input in one kernel [chunks, in, out]:
  [M, in] -> [chunks, M, out].

  Each chunk's input and output axes carry `axes` as a Linear's would; the chunk axis is never
  split. One Linear to chunks x out, then split, would lay the chunks end to end across the
  shards of its output axis, so taking one chunk would move data between devices.
  """
  kernel_init = (nnx.initializers.zeros_init() if zero_init else
                 nnx.initializers.xavier_uniform(in_axis=-2, out_axis=-1, batch_axis=(0,)))
  return nnx.Einsum(
      "mi,cio->cmo", (num_chunks, in_features, out_features), (num_chunks, out_features),
      dtype=dtype, param_dtype=param_dtype,
      kernel_init=partitioned(kernel_init, ("chunks",) + tuple(axes)),
      bias_init=partitioned(nnx.initializers.zeros_init(), ("chunks", axes[-1])), rngs=rngs)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Pins an activation's sharding by logical axis names, mapped by the rules in context.

  Without it GSPMD may keep FSDP-sharded weights in place and replicate the batch instead. A
  no-op outside a mesh with logical rules (see sharding.logical_spec).
  """
  spec = logical_spec(x.shape, axes)
  return x if spec is None else jax.lax.with_sharding_constraint(x, spec)


def norm(kind: str, features: int, *, rngs: nnx.Rngs, axis_name: str | None = "backbone_width",
         dtype=jnp.float32, param_dtype=jnp.float32, affine: bool = True):
  """RMSNorm or LayerNorm over the last axis; `affine=False` gives a parameter-free norm."""
  scale_init = partitioned(nnx.initializers.ones_init(), (axis_name,))
  if kind == "rmsnorm":
    return nnx.RMSNorm(features, epsilon=1e-6, use_scale=affine, scale_init=scale_init,
                       dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  if kind == "layernorm":
    return nnx.LayerNorm(
        features, epsilon=1e-6, use_scale=affine, use_bias=affine, scale_init=scale_init,
        bias_init=partitioned(nnx.initializers.zeros_init(), (axis_name,)),
        dtype=dtype, param_dtype=param_dtype, rngs=rngs)
  raise ValueError(f"norm must be one of {NORMS}, got {kind!r}")


class Mlp(nnx.Module):
  """SwiGLU (gated) or GELU feed-forward block."""

  def __init__(self, d: int, hidden: int, kind: str, *, rngs: nnx.Rngs, dtype, param_dtype,
               axes=("backbone_width", "backbone_hidden")):
    if kind not in MLP_TYPES:
      raise ValueError(f"mlp_type must be one of {MLP_TYPES}, got {kind!r}")
    self.kind = kind
    kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
    self.up = dense(d, hidden, axes, **kw)
    self.gate = dense(d, hidden, axes, **kw) if kind == "swiglu" else None
    self.down = dense(hidden, d, axes[::-1], **kw)

  def __call__(self, x):
    if self.kind == "swiglu":
      return self.down(nnx.silu(self.gate(x)) * self.up(x))
    return self.down(nnx.gelu(self.up(x)))


def rope_2d(x_BLAK: jax.Array, rows_L: jax.Array, cols_L: jax.Array,
            theta: float = 10000.0) -> jax.Array:
  """Rotary embedding over two axes: half the head dims turn with the row, half with the column."""
  k = x_BLAK.shape[-1]
  if k % 4:
    raise ValueError(f"2-D RoPE needs a head dim divisible by 4, got {k}")
  quarter = k // 4
  freqs = theta ** (-jnp.arange(quarter, dtype=jnp.float32) / quarter)

  def rotate(x_half, pos_L):
    angle = pos_L.astype(jnp.float32)[:, None] * freqs[None, :]  # [L, K / 4]
    cos, sin = jnp.cos(angle)[None, :, None, :], jnp.sin(angle)[None, :, None, :]
    a, b = jnp.split(x_half.astype(jnp.float32), 2, axis=-1)
    return jnp.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)

  x_row, x_col = jnp.split(x_BLAK, 2, axis=-1)
  out = jnp.concatenate([rotate(x_row, rows_L), rotate(x_col, cols_L)], axis=-1)
  return out.astype(x_BLAK.dtype)


def timestep_embedding(t_M: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal features of flow time t in [0, 1] (scaled to [0, 1000] like DDPM steps)."""
  half = dim // 2
  freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = (t_M.astype(jnp.float32) * 1000.0)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
