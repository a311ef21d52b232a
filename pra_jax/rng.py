"""Per-example random keys: every draw an example makes depends on (key, its index) alone.

So an example sees the same noise whatever batch, microbatch, device or process it lands in:
gradient accumulation, a different device count and a sharded sampler all reproduce the draws
of one big batch. Functions that draw per example accept either one key (expanded here with
indices 0..B-1) or a [B] array of keys (already per example, e.g. a slice of a bigger batch).

Every key a run uses comes from one root, key(seed), split once into named streams that never
meet: "init" (parameter c from fold_in(init, c), nnx.Rngs' counter), "train" (update k's noise
from fold_in(train, k)), "grid" and "eval" (image k of a training grid or periodic eval from
fold_in(grid | eval, k)) and "sample" (image k of pra_jax.sample from fold_in(sample, k)). A
fold_in of the root itself would not do: nnx.Rngs(seed) folds the root with the parameter
counter, so parameter c and update k = c would share a key.
"""

import jax
import jax.numpy as jnp


STREAMS = ("init", "train", "grid", "eval", "sample")


def stream(seed: int, name: str):
  """The root key(seed)'s stream `name` (one of STREAMS)."""
  if name not in STREAMS:
    raise ValueError(f"random stream must be one of {STREAMS}, got {name!r}")
  return jax.random.split(jax.random.key(seed), len(STREAMS))[STREAMS.index(name)]


def train_step_key(seed: int, step):
  """Update `step`'s key, which example b of its batch folds with b (example_keys)."""
  return jax.random.fold_in(stream(seed, "train"), step)


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
