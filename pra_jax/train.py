"""train_and_evaluate: the whole training run, top to bottom, and the module-level train step.

Resume order (first that applies): the newest good checkpoint in workdir/checkpoints -> fresh
initialisation from config.seed. Every random draw is keyed by (seed, update count, example index),
so a resumed run draws exactly what the uninterrupted one would have.
"""

import functools
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from flax import nnx

from pra_jax import (checkpoint, config_check, data, loss, optim, periodic_eval, profiling, rng,
                     sample, sharding)
from pra_jax.models import pra


class TrainBundle(nnx.Module):
  """Everything a step updates: the model, its EMA and the optimizer state."""

  def __init__(self, config):
    self.model = pra.PRA(config, rngs=nnx.Rngs(config.seed))
    self.ema = nnx.clone(self.model)
    self.optimizer = nnx.Optimizer(self.model, optim.make_optimizer(config.train), wrt=nnx.Param)


def create_bundle(config, mesh) -> TrainBundle:
  """Model, EMA and optimizer with every array born sharded on `mesh`."""
  with sharding.use_mesh(mesh):
    return nnx.jit(lambda: TrainBundle(config))()


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


def train_step(graphdef, state, images, labels, *, config):
  """One update. Returns (new state, flat dict of scalar metrics).

  One step counter drives everything: the optimizer's count of applied updates keys the rng,
  the sigma schedule, the learning rate and the EMA warm-up. A step whose loss or gradient is
  not finite changes nothing (the update and the count are masked out), so the state is always
  safe to checkpoint and a skipped batch leaves no trace; the host decides whether to go on.
  """
  # Kept as plain arrays: merge hands the state's variables to the bundle, which updates them.
  old_leaves = jax.tree.leaves(state)
  bundle = nnx.merge(graphdef, state)
  step = bundle.optimizer.step[...]
  keys_B = rng.example_keys(jax.random.fold_in(jax.random.key(config.seed), step),
                            images.shape[0])

  def loss_fn(model, images, labels, keys):
    terms, _ = loss.forward_train(model, images, labels, keys, step, config)
    return terms["total"].mean(), {k: v.mean() for k, v in terms.items()}

  # Each example keeps its key in whichever microbatch it lands: the draws are the full batch's.
  terms, grads = accumulate_gradients(loss_fn, bundle.model, (images, labels, keys_B),
                                      config.train.grad_accum_steps)
  grad_norm = optax.global_norm(grads)
  bundle.optimizer.update(bundle.model, grads)
  params = nnx.state(bundle.model, nnx.Param)
  decay = optim.ema_decay_at(config.train.ema_decay, step)
  nnx.update(bundle.ema, optim.ema_update(nnx.state(bundle.ema, nnx.Param), params, decay))

  # The updated weights are checked too: a finite gradient can still overflow them.
  param_norm = optax.global_norm(params)
  finite = jnp.isfinite(grad_norm) & jnp.isfinite(param_norm)
  for v in terms.values():
    finite &= jnp.isfinite(v)
  new_leaves, treedef = jax.tree.flatten(nnx.state(bundle))
  new_state = jax.tree.unflatten(
      treedef, [jnp.where(finite, n, o) for n, o in zip(new_leaves, old_leaves)])
  metrics = {f"train/{k}": v for k, v in terms.items()}
  metrics.update({
      "train/grad_norm": grad_norm,
      "train/param_norm": param_norm,
      "train/lr": optim.learning_rate_schedule(config.train)(step),
      "train/finite": finite.astype(jnp.float32),
  })
  return new_state, metrics


def _flat_hparams(tree: dict, prefix: str = "") -> dict:
  """Nested config -> {'model.backbone.width': 768, ...} of scalars, as TensorBoard wants them."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(_flat_hparams(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out


class _Preemption:
  """SIGTERM (spot or preemptible capacity going away) asks the loop to save and stop."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)


def _check_finite(step, metrics, config, skipped):
  """Host side of the non-finite guard, run one step late."""
  if metrics["train/finite"] > 0:
    return skipped
  bad = sorted(k for k, v in metrics.items() if not np.isfinite(v))
  if config.train.nonfinite == "skip":
    logging.warning("Step %d skipped: non-finite %s.", step, ", ".join(bad))
    return skipped + 1
  raise FloatingPointError(f"non-finite {', '.join(bad)} at step {step}; the update was not "
                           f"applied and the last good state is checkpointed. Set "
                           f"--config.train.nonfinite=skip to step over such batches.")


def train_and_evaluate(config, workdir: str, *, overwrite: bool = False) -> dict:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the last metrics."""
  # -- checks that cost nothing ---------------------------------------------------------
  config_check.validate(config)
  checkpoint.check_workdir(workdir, config, overwrite=overwrite)
  mesh = sharding.make_mesh(config.sharding.mesh)
  global_batch = config.train.batch_size
  if global_batch % sharding.batch_divisor(mesh) or global_batch % jax.process_count():
    raise ValueError(f"config train.batch_size={global_batch} must be divisible by the data x "
                     f"fsdp mesh size {sharding.batch_divisor(mesh)} and the "
                     f"{jax.process_count()} processes")
  config_check.check_microbatches(config, sharding.batch_divisor(mesh))
  data.validate_config(config.data)
  logging.info("Mesh %s on %d devices (%d processes).", dict(mesh.shape), mesh.size,
               jax.process_count())

  # -- data ------------------------------------------------------------------------------
  train_iter = data.make_train_iterator(
      config.data, local_batch_size=global_batch // jax.process_count(), seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())

  # -- model, EMA, optimizer (born sharded) ---------------------------------------------
  bundle = create_bundle(config, mesh)
  logging.info("Parameters: %s", pra.count_params(bundle.model))
  graphdef, state = nnx.split(bundle)
  del bundle
  for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(nnx.merge(graphdef, state).model)):
    logging.log_first_n(logging.INFO, "param %s %s %s %s", 1000, jax.tree_util.keystr(path),
                        leaf.shape, leaf.dtype, leaf.sharding.spec)
  state_sharding = jax.tree.map(lambda a: a.sharding, state)

  # -- restore ---------------------------------------------------------------------------
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint)
  restored, start_step = ckpt.restore_latest(state, train_iter)
  if restored is not None:
    state = restored
    logging.info("Resumed from %s at step %d.", ckpt.directory, start_step)
  start_step = start_step or 0

  # -- step function ---------------------------------------------------------------------
  step_fn = jax.jit(functools.partial(train_step, graphdef, config=config), donate_argnums=0,
                    out_shardings=(state_sharding, None))

  # -- loop ------------------------------------------------------------------------------
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start_step == 0:
    writer.write_hparams(_flat_hparams(config.to_dict()))
  if config.data.source == "synthetic":   # Labelled on the dashboard, not only in the log.
    writer.write_texts(start_step, {"data": "SYNTHETIC random images (data.source=synthetic): "
                                            "a smoke test; the losses mean nothing"})
  num_steps = config.train.num_steps
  progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  preemption = _Preemption()
  profiler = profiling.StepProfiler(config.train.profile_steps, workdir)
  pending, skipped, bad_images, last, last_eval = None, 0, 0, {}, {}

  def flush(pending):
    nonlocal skipped, last
    step, metrics = pending
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    skipped = _check_finite(step, metrics, config, skipped)
    metrics.update({"train/nonfinite_skipped": skipped, "data/bad_images": bad_images})
    if step % config.train.log_every == 0 or step == num_steps:
      writer.write_scalars(step, metrics)
    last = metrics

  with sharding.use_mesh(mesh):
    step = start_step
    try:
      for step in range(start_step + 1, num_steps + 1):
        batch = next(train_iter)
        bad_images += int(np.sum(batch.pop("bad")))
        batch = sharding.global_batch(batch, mesh)
        profiler(step, state)
        state, metrics = step_fn(state, batch["image"], batch["label"])
        if pending is not None:
          flush(pending)  # Fetch step - 1 while step runs: the host never waits on the device.
        pending = (step, metrics)
        progress(step)
        if config.train.sample_every and (step % config.train.sample_every == 0 or step == num_steps):
          sample.write_grid(nnx.merge(graphdef, state), config, workdir, step, writer)
        if config.train.eval_every and (step % config.train.eval_every == 0 or step == num_steps):
          bundle = nnx.merge(graphdef, state)
          last_eval = periodic_eval.evaluate_model(
              bundle.ema if config.sample.use_ema else bundle.model, config, workdir, step, writer)
        preempted = preemption.requested or ckpt.reached_preemption(step)
        if step % config.checkpoint.every == 0 or step == num_steps or preempted:
          flush(pending)
          pending = None
          ckpt.save(step, state, train_iter, force=True)
        if preempted:
          ckpt.wait()
          logging.warning("Preempted at step %d: checkpoint saved, exiting.", step)
          break
      if pending is not None:
        flush(pending)
    except FloatingPointError:
      ckpt.save(step, state, train_iter, force=True)
      ckpt.wait()
      raise
    finally:
      profiler.stop()
      preemption.restore()
      ckpt.close()
      writer.flush()
  return {**last, **last_eval}
