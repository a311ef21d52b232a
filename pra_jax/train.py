"""train_and_evaluate: the whole training run, top to bottom: checks, data, state, restore, loop.

The step it runs is pra_jax/train_step.py; how it lives through a SIGTERM or a lost peer is
pra_jax/preemption.py.

Resume order (first that applies): the newest good checkpoint in workdir/checkpoints -> fresh
initialisation from config.seed. Every random draw is keyed by (seed, update count, example index),
so a resumed run draws exactly what the uninterrupted one would have.
"""

import os
import time

import jax
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from flax import nnx, traverse_util

from pra_jax import (checkpoint, cli, config_check, data, periodic_eval, profiling, run_record,
                     sharding, train_step)
from pra_jax import preemption as preemption_lib
from pra_jax.sampling import ar_loop, data_parallel, grids
from pra_jax.models import pra


PARAMS_FILE = "params.txt"


class _LogWriter(metric_writers.LoggingWriter):
  """The log's writer: scalars as CLU logs them; the hyperparameters, one line of every field,
  only on TensorBoard's HPARAMS tab and in config.json."""

  def write_hparams(self, hparams):
    logging.info("Hyperparameters: %d fields, on TensorBoard's HPARAMS tab and in %s.",
                 len(hparams), run_record.CONFIG_FILE)


def _make_writer(workdir: str):
  """Log and TensorBoard on process 0; the log only elsewhere (one dashboard per run)."""
  writers = [_LogWriter()]
  if jax.process_index() == 0:
    writers.append(metric_writers.SummaryWriter(workdir))
  return metric_writers.AsyncMultiWriter(writers)


def _flat_hparams(tree: dict) -> dict:
  """Nested config -> {'model.backbone.width': 768, ...} of scalars, as TensorBoard wants them."""
  return {k: v if isinstance(v, (int, float, str, bool)) else str(v)
          for k, v in traverse_util.flatten_dict(tree, sep=".").items()}


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


class _GridSampler:
  """The data-parallel generator that grids and periodic evals share: every device of every
  process samples (config.sample.batch_size images each per call), process 0 writes. Compiled at
  the first grid or eval; it holds a replicated copy of the weights only while one runs."""

  def __init__(self, graphdef, config, mesh):
    self._graphdef, self._config, self._mesh = graphdef, config, mesh
    self._generator = None

  def load(self, state) -> data_parallel.DataParallelGenerator:
    model = train_step.weights(nnx.merge(self._graphdef, state), self._config.sample.use_ema)
    if self._generator is None:
      mesh = data_parallel.sampling_mesh_like(self._mesh)
      self._generator = data_parallel.DataParallelGenerator(
          model, mesh, ar_loop.SampleSettings.from_config(self._config.sample),
          self._config.sample.batch_size)
      logging.info("Grid and eval sampler compiled in %.1f s: %d images per call (%d per device "
                   "x %d devices).", self._generator.compile_s, self._generator.batch,
                   self._config.sample.batch_size, mesh.size)
    else:
      self._generator.load(model)
    return self._generator

  def unload(self) -> None:
    if self._generator is not None:
      self._generator.unload()


def train_and_evaluate(config, workdir: str, *, overwrite: bool = False) -> dict:
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the last metrics.

  Nothing is written to the workdir until the config, mesh, data and checkpoints are known to
  fit (then config.json and config_history.jsonl are recorded).
  """
  preemption = preemption_lib.Preemption()  # First: a SIGTERM during the checks and compiles
  # exits at once.
  try:
    return _train(config, workdir, overwrite, preemption)
  finally:
    preemption.restore()


def _train(config, workdir, overwrite, preemption) -> dict:
  # -- checks that cost nothing ---------------------------------------------------------
  with cli.user_input():
    config_check.validate(config)
    plan = run_record.check_workdir(workdir, config, overwrite=overwrite)
    mesh = sharding.make_mesh(config.sharding.mesh)
    global_batch = config.train.batch_size
    if global_batch % sharding.batch_divisor(mesh) or global_batch % jax.process_count():
      raise ValueError(f"config train.batch_size={global_batch} must be divisible by the data x "
                       f"fsdp mesh size {sharding.batch_divisor(mesh)} and the "
                       f"{jax.process_count()} processes")
    config_check.check_microbatches(config, sharding.batch_divisor(mesh))
    data.check_source(config.data)
    logging.info("Mesh %s on %d devices (%d processes).", dict(mesh.shape), mesh.size,
                 jax.process_count())
    preemption.single = jax.process_count() == 1
    if preemption.requested:  # Came during the checks, before the watcher could act.
      preemption.exit_if_clean()

    # -- data ----------------------------------------------------------------------------
    local_batch = global_batch // jax.process_count()
    train_iter = data.make_train_iterator(
        config.data, local_batch_size=local_batch, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count())

  # -- model, EMA, optimizer (born sharded) ---------------------------------------------
  bundle = train_step.create_bundle(config, mesh)
  logging.info("Parameters: %s", pra.count_params(bundle.model))
  graphdef, state = nnx.split(bundle)
  del bundle
  param_table = [f"{jax.tree_util.keystr(path)} {tuple(leaf.shape)} {leaf.dtype} {leaf.sharding.spec}"
                 for path, leaf in jax.tree_util.tree_leaves_with_path(
                     nnx.state(nnx.merge(graphdef, state).model))]

  # -- restore ---------------------------------------------------------------------------
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint)
  preemption.is_saving = ckpt.saving
  restored, start_step = None, None
  if not plan.replace_checkpoints:
    with cli.user_input():
      restored, start_step = ckpt.restore_latest(state, train_iter, changes=plan.changes)
  if restored is not None:
    state = restored
    logging.info("Resumed from %s at step %d.", ckpt.directory, start_step)
  start_step = start_step or 0
  # The run starts: from here on it writes.
  run_record.record_config(plan, start_step)
  if jax.process_index() == 0:   # One line per parameter: shape, dtype, sharding.
    with open(os.path.join(workdir, PARAMS_FILE), "w") as f:
      f.write("\n".join(param_table) + "\n")
    logging.info("Per-parameter shapes, dtypes and shardings: %s",
                 os.path.join(workdir, PARAMS_FILE))
  ckpt.manager.reload()
  ckpt.clean_torn_saves()

  # -- step function ---------------------------------------------------------------------
  step_fn = train_step.jit_train_step(graphdef, state, config)

  # -- loop ------------------------------------------------------------------------------
  writer = _make_writer(workdir)
  if start_step == 0:
    writer.write_hparams(_flat_hparams(config.to_dict()))
  if config.data.source == "synthetic":   # Labelled on the dashboard, not only in the log.
    writer.write_texts(start_step, {"data": "SYNTHETIC random images (data.source=synthetic): "
                                            "a smoke test; the losses mean nothing"})
  num_steps = config.train.num_steps
  progress = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  profiler = profiling.StepProfiler(config.train.profile_steps, workdir)
  vote = preemption_lib.StopVote(mesh, local_batch) if jax.process_count() > 1 else None
  pending, skipped, bad_images, last, last_eval = None, 0, 0, {}, {}
  sampler = _GridSampler(graphdef, config, mesh)

  def flush(pending):
    nonlocal skipped, last
    step, metrics = pending
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    skipped = _check_finite(step, metrics, config, skipped)
    metrics.update({"train/nonfinite_skipped": skipped, "data/bad_images": bad_images})
    if step % config.train.log_every == 0 or step == num_steps:
      writer.write_scalars(step, metrics)
    last = metrics

  def abortable(fn, what, step):
    """Runs a grid or an eval that a SIGTERM may abandon (one process; see Preemption)."""
    preemption.abortable = True
    try:
      return fn()
    except preemption_lib.Abort:
      logging.warning("SIGTERM during the %s at step %d: abandoned it to save now.", what, step)
      preemption_lib.abandoned_native_work = True
      return None
    finally:
      preemption.abortable = False
      preemption.abort_pending = False

  with sharding.use_mesh(mesh):
    step = start_step
    try:
      for step in range(start_step + 1, num_steps + 1):
        batch = next(train_iter)
        bad_images += int(np.sum(batch.pop("bad")))
        batch = sharding.global_batch(batch, mesh)
        profiler(step, state)
        if step == start_step + 1:
          logging.info("Compiling the train step (a minute or two on a CPU) ...")
          t_compile = time.perf_counter()
        state, metrics = step_fn(state, batch["image"], batch["label"])
        if step == start_step + 1:
          jax.block_until_ready(metrics)
          logging.info("Train step compiled and step %d run in %.1f s.", step,
                       time.perf_counter() - t_compile)
        preemption.stepped(vote is not None)  # Only now: a SIGTERM in the compile loses nothing.
        if pending is not None:
          flush(pending)  # Fetch step - 1 while step runs: the host never waits on the device.
        pending = (step, metrics)
        progress(step)
        # One process: its own flag. Several: the vote of the step before, the same everywhere.
        stop = (lambda: preemption.requested) if vote is None else (
            lambda agreed=vote(preemption.requested): agreed)
        if not stop() and config.train.sample_every and (
            step % config.train.sample_every == 0 or step == num_steps):
          abortable(lambda: grids.write_grid(sampler.load(state), config, workdir, step,
                                             writer, check_stop=preemption.check_abort),
                    "sample grid", step)
          sampler.unload()
        if not stop() and config.train.eval_every and (
            step % config.train.eval_every == 0 or step == num_steps):
          last_eval = abortable(lambda: periodic_eval.evaluate_model(
              sampler.load(state), config, workdir, step, writer,
              check_stop=preemption.check_abort), "periodic eval", step) or last_eval
          sampler.unload()
        preempted = stop() or ckpt.reached_preemption(step)
        if step % config.checkpoint.every == 0 or step == num_steps or preempted:
          flush(pending)
          pending = None
          ckpt.save(step, state, train_iter, force=True)
          writer.flush()
          preemption.dirty = False
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
    except Exception as e:  # pylint: disable=broad-except
      if jax.process_count() > 1 and preemption_lib.peer_failure(e) is not None:
        preemption_lib.lost_peer_exit(preemption_lib.peer_failure(e))
      raise
    finally:
      profiler.stop()
      preemption.abortable = False
      ckpt.close()
      writer.flush()
      train_iter.close()   # grain's worker processes stop here, not at interpreter exit.
  return {**last, **last_eval}
