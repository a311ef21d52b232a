"""Tiny PRA models and batches for tests: built from the tiny config without compiling an init.

`random_model` fills an abstract model with seeded random parameters (no zero-initialised output
layers), so every test of sensitivity, causality or gradient flow is able to fail.
"""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import tiny
from pra_jax import data
from pra_jax.models import pra

# Filling an abstract model costs milliseconds; `pra.create_model` compiles an init (seconds).


def tiny_config(**overrides):
  """The tiny config with dotted-path overrides, e.g. tiny_config(**{'rollout.mode': 'exact'})."""
  c = tiny.get_config()
  for path, value in overrides.items():
    *parents, leaf = path.split(".")
    node = c
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


def randomise(model: nnx.Module, seed: int = 0, scale: float = 1.0) -> nnx.Module:
  """Replaces every Param of `model` (abstract or real) by seeded random values, in place.

  Kernels and embeddings get N(0, scale^2 / fan_in) (fan_in the second-to-last axis, so stacked
  scan layers are treated per layer), norm scales 1 + N(0, 0.1^2), biases and everything else
  N(0, 0.1^2): no output is structurally independent of its inputs.
  """
  rng = np.random.default_rng(seed)
  state = nnx.state(model, nnx.Param)

  def fill(path, leaf):
    name = str(path[-1].key if hasattr(path[-1], "key") else path[-1])
    shape = leaf.shape
    if name == "scale":
      value = 1.0 + 0.1 * rng.standard_normal(shape)
    elif len(shape) >= 2 and name in ("kernel", "embedding"):
      value = scale * rng.standard_normal(shape) / np.sqrt(shape[-2])
    else:
      value = 0.1 * rng.standard_normal(shape)
    return jnp.asarray(value, leaf.dtype)

  nnx.update(model, jax.tree.map_with_path(fill, state))
  return model


def random_model(config, seed: int = 0) -> pra.PRA:
  """A PRA for `config` with random (non-degenerate) parameters, built without an init compile."""
  return randomise(pra.abstract_model(config), seed)


def copy_params(src: nnx.Module, dst: nnx.Module) -> nnx.Module:
  """Copies every Param of `src` into `dst` (same structure and shapes)."""
  nnx.update(dst, jax.tree.map(jnp.asarray, nnx.state(src, nnx.Param)))
  return dst


def digits_batch(n: int = 8, image_size: int = 16):
  """A fixed batch: the first n training digits (uint8 [n, s, s, 1], int32 [n])."""
  images, labels = data.load_digits_split("train", image_size)
  return jnp.asarray(images[:n]), jnp.asarray(labels[:n])
