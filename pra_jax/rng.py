"""Per-example random keys: every draw an example makes depends on (key, its index) alone.

So an example sees the same noise whatever batch, microbatch, device or process it lands in:
gradient accumulation, a different device count and a sharded sampler all reproduce the draws
of one big batch. Functions that draw per example accept either one key (expanded here with
indices 0..B-1) or a [B] array of keys (already per example, e.g. a slice of a bigger batch).
"""

import jax
import jax.numpy as jnp


def example_keys(key, count: int, first_index=0):
  """[count] keys: fold_in(key, first_index + k) for k in 0..count-1."""
  indices = jnp.asarray(first_index, jnp.uint32) + jnp.arange(count, dtype=jnp.uint32)
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)


def as_example_keys(key, count: int):
  """One key -> example_keys(key, count); [count] keys pass through unchanged."""
  shape = tuple(key.shape)
  if shape == ():
    return example_keys(key, count)
  if shape == (count,):
    return key
  raise ValueError(f"expected one random key or a [{count}] array of per-example keys, got "
                   f"key shape {shape}")


def split_each(keys_B, num: int):
  """[B] keys -> [B, num] keys, each example's split into `num` independent streams."""
  return jax.vmap(lambda k: jax.random.split(k, num))(keys_B)
