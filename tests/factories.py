"""Tiny PRA models, batches and compiled step functions shared by the model tests.

`random_model` fills an abstract model with seeded random parameters (no zero-initialised output
layers), so every test of sensitivity, causality or gradient flow is able to fail. The compiled
functions are cached per config / settings so that test files share their compiles.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from configs import pra_s, tiny
from pra_jax import config_check, data, loss, sharding, train_step
from pra_jax.sampling import ar_loop
from pra_jax.models import pra

# At these sizes XLA's compile time dominates every test and its optimisation passes buy nothing:
# level 0 compiles 2-3x faster. Results agree with the default level to float32 rounding.
FAST_COMPILE = {"xla_backend_optimization_level": 0}


def jit(fn, **kwargs):
  return jax.jit(fn, compiler_options=FAST_COMPILE, **kwargs)


def train_step_fn(graphdef, state, config, *, donate: bool = False):
  """The production train step (train_step.jit_train_step) at the tests' compile level; the
  state is kept unless `donate` (tests compare it before and after)."""
  return train_step.jit_train_step(graphdef, state, config, donate=donate,
                                  compiler_options=FAST_COMPILE)


def tiny_config(**overrides):
  """The tiny config with dotted-path overrides, e.g. tiny_config(**{'rollout.mode': 'exact'})."""
  c = tiny.get_config()
  for path, value in overrides.items():
    config_check.set_field(c, path, value)
  return c


def shrunk_pra_s(num_steps: int, image_size: int = 32):
  """configs/pra_s.py (scanned bf16 backbone and head, 3 channels, 16x16x3 patches) shrunk to a
  few thousand parameters at `image_size`, checkpointing every 2 steps: the paper recipe's code
  path at test cost. The data section is pra_s.py's (TFDS ImageNet) but for the image size."""
  c = pra_s.get_config()
  c.data.image_size = image_size
  c.model.patch_size = 16         # Kept: 16x16x3 = 768-value patches, as at ImageNet 256.
  c.model.backbone.update(width=32, depth=2, num_heads=2)
  c.model.head.update(width=32, depth=1, num_draws=1)
  c.model.state.update(width=32, depth=1)
  c.train.update(batch_size=4, num_steps=num_steps, warmup_steps=1, log_every=1)
  c.train.sample_every = 0
  c.checkpoint.every = 2
  c.checkpoint.async_save = False
  return c


def _placement(leaf, mesh):
  """Where pra.create_model would put this parameter: its named sharding on a concrete mesh."""
  spec = getattr(getattr(leaf, "sharding", None), "spec", None)
  return jax.sharding.NamedSharding(mesh, spec) if spec is not None else None


def randomise(model: nnx.Module, seed: int = 0) -> nnx.Module:
  """Replaces every Param of `model` (abstract or real) by seeded random values, in place.

  Kernels and embeddings get N(0, 1 / fan_in) (fan_in the second-to-last axis, so stacked scan
  layers count per layer), norm scales 1 + N(0, 0.1^2), biases and the rest N(0, 0.1^2).
  """
  rng = np.random.default_rng(seed)
  flat = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    shape = var.get_value().shape
    if path[-1] == "scale":
      flat[path] = 1.0 + 0.1 * rng.standard_normal(shape)
    elif len(shape) >= 2 and path[-1] in ("kernel", "embedding"):
      flat[path] = rng.standard_normal(shape) / np.sqrt(shape[-2])
    else:
      flat[path] = 0.1 * rng.standard_normal(shape)
  return set_params(model, flat)


def random_model(config, seed: int = 0) -> pra.PRA:
  """A PRA for `config` with random (non-degenerate) parameters, built without an init compile."""
  return randomise(pra.abstract_model(config), seed)


def flat_params(tree) -> dict[tuple, jax.Array]:
  """{path: array} of a model's Params, or of a gradient State."""
  state = tree if isinstance(tree, nnx.State) else nnx.state(tree, nnx.Param)
  return {path: var.get_value() for path, var in nnx.to_flat_state(state)}


def set_params(model: nnx.Module, flat: dict[tuple, jax.Array]) -> nnx.Module:
  """Writes {path: array} into the model's Params (every Param must be given).

  Values are placed as pra.create_model places them, so both kinds of model share compiles.
  """
  state = nnx.state(model, nnx.Param)
  missing = set(dict(nnx.to_flat_state(state))) - set(flat)
  if missing:
    raise KeyError(f"no values for {sorted(missing)[:3]}...")
  mesh = sharding.single_device_mesh()
  placed = []
  for path, var in nnx.to_flat_state(state):
    old = var.get_value()
    placed.append((path, jax.device_put(jnp.asarray(flat[path], old.dtype),
                                        _placement(old, mesh))))
  nnx.update(model, nnx.from_flat_state(placed))
  return model


def unstack_layers(flat_scanned: dict[tuple, jax.Array], depth: int) -> dict[tuple, jax.Array]:
  """Scanned backbone params ('blocks', name...) [depth, ...] -> unrolled ('blocks', i, name...)."""
  out = {}
  for path, value in flat_scanned.items():
    if path[:2] == ("backbone", "blocks"):
      for i in range(depth):
        out[path[:2] + (i,) + path[2:]] = value[i]
    else:
      out[path] = value
  return out


def digits_batch(n: int = 8, image_size: int = 16):
  """A fixed batch: the first n training digits (uint8 [n, s, s, 1], int32 [n])."""
  images, labels = data.load_digits_split("train", image_size)
  return jnp.asarray(images[:n]), jnp.asarray(labels[:n])


# -- compiled functions, one per config / settings -----------------------------------------------
_LOSS_FNS = {}


def loss_and_grads(config):
  """fn(model, images, labels, key, weights) -> (terms, aux, grads of mean(w0 head + w1 recon)).

  Weights (1, loss.recon_weight) give the gradient of the training loss 'total'; (1, 0) and
  (0, 1) separate what the head and the reconstruction losses each reach.
  """
  cache_key = config.to_json()
  if cache_key not in _LOSS_FNS:
    def fn(model, images, labels, key, weights):
      def objective(model):
        terms, aux = loss.forward_train(model, images, labels, key, 0, config)
        return jnp.mean(weights[0] * terms["head"] + weights[1] * terms["recon"]), (terms, aux)
      (_, (terms, aux)), grads = nnx.value_and_grad(objective, has_aux=True)(model)
      return terms, aux, grads
    _LOSS_FNS[cache_key] = jit(fn)
  return _LOSS_FNS[cache_key]


@functools.cache
def sample_patches_fn(settings: ar_loop.SampleSettings):
  """fn(model, labels, key) -> ar_loop.sample_patches's (x_BNP, g_BNZ) under `settings`."""
  return jit(lambda model, labels, key: ar_loop.sample_patches(model, labels, key, settings))
