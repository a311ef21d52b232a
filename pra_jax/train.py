"""train_and_evaluate: the whole training run, top to bottom, and the module-level train step.

Resume order (first that applies): the newest good checkpoint in workdir/checkpoints -> fresh
initialisation from config.seed. Every random draw is keyed by (seed, update count, example index),
so a resumed run draws exactly what the uninterrupted one would have.
"""

import os
import re
import signal
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions
from flax import nnx, traverse_util

from pra_jax import (checkpoint, cli, config_check, data, grids, periodic_eval, profiling,
                     run_record, run_state, sharding)
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


class _Abort(Exception):
  """Raised by SIGTERM inside an abortable region (sample grid, periodic eval)."""


class _Preemption:
  """SIGTERM (spot or preemptible capacity going away): stop with nothing lost, soon.

  - Nothing trained since the last committed checkpoint (compiling, restoring, loading data, or
    just after a save), one process: exit 0 at once, even inside a compile. A watcher thread is
    woken by the signal at C level (signal.set_wakeup_fd), so a busy main thread cannot delay it.
  - Inside a sample grid or periodic eval (one process): the eval is abandoned, the loop saves.
  - Otherwise the loop saves at the end of the current step and exits 0. With several
    processes, the notice is shared through an all-reduce one step late (see `_StopVote`), so
    every process stops at the same step whichever of them got the signal.
  """

  def __init__(self):
    self.requested = False
    self.dirty = False        # Steps trained since the last committed checkpoint.
    self.abortable = False
    self.abort_pending = False  # An abort raised where it may have been swallowed.
    self.is_saving = lambda: False
    self.single = False       # Set once the runtime is up (asking jax here would start it).
    self._previous = signal.signal(signal.SIGTERM, self._handle)
    self._read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    self._write_fd = write_fd
    self._previous_fd = signal.set_wakeup_fd(write_fd)
    self._watcher = threading.Thread(target=self._watch, daemon=True, name="pra_jax SIGTERM")
    self._watcher.start()

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True
    if self.abortable and self.single:
      self.abortable = False
      # Raised wherever the main thread is; if that is somewhere that swallows exceptions (a
      # garbage-collection callback), check_abort raises it again before the next batch.
      self.abort_pending = True
      raise _Abort()

  def check_abort(self):
    """Called between the batches of a grid or an eval: raises a SIGTERM's abort once."""
    if self.abort_pending:
      self.abort_pending = False
      raise _Abort()

  def _watch(self):
    while True:
      try:
        got = os.read(self._read_fd, 64)
      except OSError:
        return
      if not got:
        os.close(self._read_fd)
        return
      if signal.SIGTERM in got:
        self.exit_if_clean()

  def exit_if_clean(self):
    if self.single and not self.dirty and not self.is_saving():
      logging.warning("SIGTERM with nothing trained since the last checkpoint: exiting now.")
      logging.flush()
      os._exit(0)  # pylint: disable=protected-access

  def restore(self):
    signal.signal(signal.SIGTERM, self._previous)
    signal.set_wakeup_fd(self._previous_fd)
    os.close(self._write_fd)  # Ends the watcher's read.


class _StopVote:
  """Several processes agree on the stop step: each step all-reduces (max) every process's
  SIGTERM flag on the devices; the result is read one step later, when the host waits for that
  step's metrics anyway, so the agreement costs no extra stall and all processes see the same
  vote at the same step."""

  def __init__(self, mesh, local_size: int):
    self._mesh, self._local_size = mesh, local_size
    self._max = jax.jit(jnp.max, out_shardings=sharding.replicated(mesh))
    self._pending = None

  def __call__(self, local_flag: bool) -> bool:
    """Casts this step's vote; returns the previous step's outcome."""
    votes = sharding.global_batch({"v": np.full((self._local_size,), int(local_flag), np.int32)},
                                  self._mesh)["v"]
    previous, self._pending = self._pending, self._max(votes)
    return previous is not None and bool(jax.device_get(previous))


# How a lost peer shows in a collective (Gloo's connection reset) or in a barrier of the
# coordination service (the heartbeat timeout), in the exception or in what it wraps.
_PEER_LOSS = re.compile(r"Gloo|Connection reset by peer|heartbeat timeout|task is set to ERROR")


def _peer_failure(e: BaseException):
  while e is not None:
    if _PEER_LOSS.search(str(e)):  # JaxRuntimeError, or a ValueError from Orbax's allgather.
      return e
    e = e.__cause__ or e.__context__
  return None


def _lost_peer_exit(e: Exception) -> None:
  """A collective failed under jax.distributed: a peer is gone. Say which, and exit now (the
  distributed runtime's own shutdown would wait for the dead peer)."""
  n, me = jax.process_count(), jax.process_index()
  named = re.search(r"Task (\d+) heartbeat timeout", str(e))
  if named:
    lost = f"process {named.group(1)}"
  elif n == 2:
    lost = f"process {1 - me}"
  else:  # Ask the coordination service; it answers once the heartbeat timeout has passed.
    result = {}

    def ask():
      try:
        from jax._src import distributed
        result["live"] = distributed.global_state.client.get_live_nodes(list(range(n)))
      except Exception as err:  # pylint: disable=broad-except
        result["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"

    asker = threading.Thread(target=ask, daemon=True)
    asker.start()
    asker.join(LOST_PEER_QUERY_S)
    if "live" in result:
      lost = "process " + ", ".join(str(i) for i in range(n) if i not in set(result["live"]))
    else:
      lost = f"unknown ({result.get('error', 'the coordinator did not answer')})"
  logging.error("Process %d of %d lost a peer: %s. A collective failed (%s: %s). Exiting with "
                "status %d; restart the job and it resumes from the newest checkpoint.",
                me, n, lost, type(e).__name__, str(e).splitlines()[0][:300], LOST_PEER_EXIT)
  logging.flush()
  os._exit(LOST_PEER_EXIT)  # pylint: disable=protected-access


# Longer than main's --heartbeat_timeout default (30 s): by then the coordinator knows.
LOST_PEER_QUERY_S = 40.0

LOST_PEER_EXIT = 3


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
  """Trains `config` in `workdir` (resuming if it holds checkpoints); returns the last metrics.

  Nothing is written to the workdir until the config, mesh, data and checkpoints are known to
  fit (then config.json and config_history.jsonl are recorded).
  """
  preemption = _Preemption()  # First: a SIGTERM during the checks and compiles exits at once.
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
    data.validate_config(config.data)
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
  bundle = run_state.create_bundle(config, mesh)
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
  step_fn = run_state.jit_train_step(graphdef, state, config)

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
  vote = _StopVote(mesh, local_batch) if jax.process_count() > 1 else None
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

  def abortable(fn, what, step):
    """Runs a grid or an eval that a SIGTERM may abandon (one process; see _Preemption)."""
    preemption.abortable = True
    try:
      return fn()
    except _Abort:
      logging.warning("SIGTERM during the %s at step %d: abandoned it to save now.", what, step)
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
        preemption.dirty = True  # Only now: a SIGTERM while this step compiled loses nothing.
        if pending is not None:
          flush(pending)  # Fetch step - 1 while step runs: the host never waits on the device.
        pending = (step, metrics)
        progress(step)
        # One process: its own flag. Several: the vote of the step before, the same everywhere.
        stop = (lambda: preemption.requested) if vote is None else (
            lambda agreed=vote(preemption.requested): agreed)
        if not stop() and config.train.sample_every and (
            step % config.train.sample_every == 0 or step == num_steps):
          abortable(lambda: grids.write_grid(nnx.merge(graphdef, state), config, workdir, step,
                                             writer, check_stop=preemption.check_abort),
                    "sample grid", step)
        if not stop() and config.train.eval_every and (
            step % config.train.eval_every == 0 or step == num_steps):
          model = run_state.weights(nnx.merge(graphdef, state), config.sample.use_ema)
          last_eval = abortable(lambda: periodic_eval.evaluate_model(
              model, config, workdir, step, writer, check_stop=preemption.check_abort),
              "periodic eval", step) or last_eval
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
      if jax.process_count() > 1 and _peer_failure(e) is not None:
        _lost_peer_exit(_peer_failure(e))
      raise
    finally:
      profiler.stop()
      preemption.abortable = False
      ckpt.close()
      writer.flush()
  return {**last, **last_eval}
