"""The train step: what it updates (model, EMA, optimizer: the TrainBundle), how that state is
built, the pure step function with gradient accumulation, and its one jitted form.

Everything that trains, compiles, plans or benchmarks a run builds its state here, so they all
hold exactly what train_and_evaluate holds:

  bundle = create_bundle(config, mesh)                   # born sharded on the mesh
  graphdef, state = nnx.split(bundle)
  step_fn = jit_train_step(graphdef, state, config)     # state donated, shardings kept
  state, metrics = step_fn(state, images_BHWC, labels_B)

Reading a trained run's weights back is pra_jax/restore.py.
"""

import functools
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding

from pra_jax import loss, optim, rng, sharding
from pra_jax.models import pra


class TrainBundle(nnx.Module):
  """Everything a step updates: the model, its EMA and the optimizer state."""

  def __init__(self, config):
    self.model = pra.PRA(config, rngs=nnx.Rngs(rng.stream(config.seed, "init")))
    self.ema = nnx.clone(self.model)
    # train.ema_decays: more EMAs beside `ema`, each its own checkpoint part ema_1, ema_2, ... (so
    # one run can be swept over its EMA: python -m pra_jax.sweep --weights). Each costs one more
    # copy of the parameters in memory and in every checkpoint.
    for part in ema_parts(config)[1:]:
      setattr(self, part, nnx.clone(self.model))
    self.optimizer = nnx.Optimizer(self.model, optim.make_optimizer(config.train), wrt=nnx.Param)


def extra_ema_decays(config) -> tuple:
  return tuple(config.train.get("ema_decays", ()))


def ema_parts(config) -> list[str]:
  """The bundle's EMA parts: 'ema' (train.ema_decay), then 'ema_<i>' per train.ema_decays."""
  return ["ema"] + [f"ema_{i}" for i in range(1, len(extra_ema_decays(config)) + 1)]


def weights_part(weights: str) -> str:
  """The checkpoint part of a weights name: 'ema', 'ema_<i>' (train.ema_decays[i - 1]) or
  'raw' (the trained weights, part 'model')."""
  return "model" if weights == "raw" else weights


def create_bundle(config, mesh) -> TrainBundle:
  """Model, EMA and optimizer with every array born sharded on `mesh`."""
  with sharding.use_mesh(mesh):
    return nnx.jit(lambda: TrainBundle(config))()


def abstract_state(config, mesh):
  """(graphdef, state) of a TrainBundle as shapes, dtypes and shardings on `mesh`: no memory,
  for compiling and planning."""
  with sharding.use_mesh(mesh):
    bundle = nnx.eval_shape(lambda: TrainBundle(config))
  graphdef, state = nnx.split(bundle)
  # eval_shape leaves the specs on an abstract mesh; compiling needs the concrete devices.
  concrete = lambda l: jax.ShapeDtypeStruct(l.shape, l.dtype,
                                            sharding=NamedSharding(mesh, l.sharding.spec))
  return graphdef, jax.tree.map(concrete, state)


def weights(bundle, use_ema: bool):
  """The model a grid, an eval or a sampler reads: the EMA or the raw weights."""
  return bundle.ema if use_ema else bundle.model


def accumulate_gradients(loss_fn, model, batch, num_micro: int):
  """(metrics, gradient) of `loss_fn` over `batch`, in `num_micro` microbatches under one scan.

  loss_fn(model, *microbatch) -> (mean loss, dict of scalar means). The gradient and metrics
  are the means over the microbatches, which, equal in size, give the full batch's means; only
  one microbatch's activations are alive at a time. Microbatch j holds examples j, j + num_micro,
  j + 2 num_micro, ...: every device's contiguous shard of the batch splits in place into its
  shard of each microbatch, so nothing moves between devices (a contiguous split would put each
  microbatch on 1 / num_micro of them).
  """
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  # A pure function of the parameters: nnx transforms refuse a model from outside the scan.
  grad_fn = jax.value_and_grad(
      lambda p, *mb: loss_fn(nnx.merge(graphdef, p, rest), *mb), has_aux=True)
  if num_micro == 1:
    (_, metrics), grads = grad_fn(params, *batch)
    return metrics, grads
  size = batch[0].shape[0]
  if size % num_micro:
    raise ValueError(f"a batch of {size} does not split into {num_micro} microbatches")
  to_micro = lambda a: jnp.swapaxes(a.reshape(size // num_micro, num_micro, *a.shape[1:]), 0, 1)

  def body(grad_sum, microbatch):
    (_, metrics), grads = grad_fn(params, *microbatch)
    return jax.tree.map(jnp.add, grad_sum, grads), metrics

  grad_sum, metrics_J = jax.lax.scan(body, jax.tree.map(jnp.zeros_like, params),
                                     tuple(to_micro(a) for a in batch))
  return ({k: v.mean() for k, v in metrics_J.items()},
          jax.tree.map(lambda g: g / num_micro, grad_sum))


def _all_finite(tree) -> jax.Array:
  """True if every element of every leaf is finite (elementwise: a huge but finite tree is
  finite, where a norm would overflow)."""
  ok = jnp.bool_(True)
  for leaf in jax.tree.leaves(tree):
    ok &= jnp.all(jnp.isfinite(leaf))
  return ok


def train_step(graphdef, state, images, labels, *, config):
  """One update. Returns (new state, flat dict of scalar metrics).

  One step counter drives everything: the optimizer's count of applied updates keys the rng,
  the sigma schedule, the learning rate and the EMA warm-up. A step whose loss or gradient is
  not finite, or whose update would make a parameter non-finite (a finite gradient can still
  overflow the weights), changes nothing: the update is decided before it is applied (one
  lax.cond around the whole write), so the state is always safe to checkpoint and a skipped batch
  leaves no trace; the host decides whether to go on.
  """
  bundle = nnx.merge(graphdef, state)
  step = bundle.optimizer.step[...]
  keys_B = rng.example_keys(rng.train_step_key(config.seed, step), images.shape[0])

  def loss_fn(model, images, labels, keys):
    terms, _ = loss.forward_train(model, images, labels, keys, step, config)
    return terms["total"].mean(), {k: v.mean() for k, v in terms.items()}

  # Each example keeps its key in whichever microbatch it lands: the draws are the full batch's.
  terms, grads = accumulate_gradients(loss_fn, bundle.model, (images, labels, keys_B),
                                      config.train.grad_accum_steps)
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(grad_norm)
  for v in terms.values():
    finite &= jnp.isfinite(v)
  # Would the update overflow a weight? The candidate weights are only reduced here, never
  # stored (one fused pass over parameters, gradients and moments); the update that is kept is
  # recomputed inside the cond. The EMA of finite weights is finite.
  params = nnx.as_pure(nnx.state(bundle.model, nnx.Param))
  updates, _ = bundle.optimizer.tx.update(nnx.as_pure(nnx.state(grads, nnx.Param)),
                                          nnx.as_pure(bundle.optimizer.opt_state), params)
  finite &= _all_finite(optax.apply_updates(params, updates))
  decay = optim.ema_decay_at(config.train.ema_decay, step)

  def apply(state):
    bundle = nnx.merge(graphdef, state)
    bundle.optimizer.update(bundle.model, grads)
    params = nnx.state(bundle.model, nnx.Param)
    nnx.update(bundle.ema, optim.ema_update(nnx.state(bundle.ema, nnx.Param), params, decay))
    for i, extra_decay in enumerate(extra_ema_decays(config), 1):
      ema = getattr(bundle, f"ema_{i}")
      nnx.update(ema, optim.ema_update(nnx.state(ema, nnx.Param), params,
                                       optim.ema_decay_at(extra_decay, step)))
    return nnx.state(bundle)

  new_state = jax.lax.cond(finite, apply, lambda state: state, state)
  metrics = {f"train/{k}": v for k, v in terms.items()}
  metrics.update({
      "train/grad_norm": grad_norm,
      "train/param_norm": optax.global_norm(nnx.state(nnx.merge(graphdef, new_state).model,
                                                      nnx.Param)),
      "train/lr": optim.learning_rate_schedule(config.train)(step),
      "train/finite": finite.astype(jnp.float32),
  })
  return new_state, metrics


def jit_train_step(graphdef, state, config, *, donate: bool = True, **jit_kwargs):
  """train_step jitted as every run uses it: the state donated (the step updates it in place)
  and returned with the shardings it came in with. `state` may be abstract (ShapeDtypeStructs)
  for lowering only. Tests that compare a state before and after a step keep it (donate=False);
  `jit_kwargs` (e.g. compiler_options) pass through to jax.jit."""
  state_sharding = jax.tree.map(lambda a: a.sharding, state)
  return jax.jit(functools.partial(train_step, graphdef, config=config),
                 donate_argnums=0 if donate else (), out_shardings=(state_sharding, None),
                 **jit_kwargs)


def abstract_batch(config, mesh, global_batch: int):
  """(images, labels) as the loop feeds them: uint8 images and int32 labels split over
  data x fsdp."""
  d = config.data
  split = sharding.batch_sharding(mesh)
  images = jax.ShapeDtypeStruct((global_batch, d.image_size, d.image_size, d.channels),
                                jnp.uint8, sharding=split)
  labels = jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=split)
  return images, labels


def compile_train_step(config, mesh, global_batch: int):
  """The train step lowered and compiled exactly as train_and_evaluate jits it.

  Returns (compiled, abstract state, lower seconds, compile seconds).
  """
  graphdef, state = abstract_state(config, mesh)
  step_fn = jit_train_step(graphdef, state, config)
  with sharding.use_mesh(mesh):
    t0 = time.perf_counter()
    lowered = step_fn.lower(state, *abstract_batch(config, mesh, global_batch))
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
  return compiled, state, t1 - t0, t2 - t1
