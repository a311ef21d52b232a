"""Orbax checkpoints of a whole run: model, optimizer, EMA, step and the data iterator.

A checkpoint is either whole or ignored: Orbax commits a step directory atomically (it is
written under a temporary name and renamed when complete). A checkpoint whose tree differs from
the model's is a config mismatch, never corruption. Only a training run that matched the config
sets aside a step that does not restore. Which config may read or resume a workdir is
`run_record`'s decision, made before anything here runs.
"""

import os
import time

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from pra_jax import run_record


class CheckpointWriteError(OSError):
  """A save failed (disk full, permissions, I/O): the previous committed checkpoint stands."""


def _leaf_path(path) -> str:
  parts = []
  for p in path:
    for attr in ("key", "name", "idx"):
      if hasattr(p, attr):
        parts.append(str(getattr(p, attr)))
        break
    else:
      parts.append(str(p))
  return ".".join(parts)


def tree_signature(tree) -> dict:
  """{'model.backbone.layers.kernel': (shape, dtype)} of a state or of checkpoint metadata."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out[_leaf_path(path)] = (tuple(leaf.shape), str(leaf.dtype))
  return out


class Checkpointer:
  """Saves and restores {'state': nnx state, 'data': grain iterator} under workdir/checkpoints.

  read_only=True never writes, renames or deletes anything (the directory need not exist).
  """

  def __init__(self, workdir: str, ckpt_cfg, *, read_only: bool = False):
    self.directory = run_record.checkpoint_dir(workdir)
    self.read_only = read_only
    options = ocp.CheckpointManagerOptions(
        max_to_keep=ckpt_cfg.max_to_keep,
        enable_async_checkpointing=ckpt_cfg.async_save and not read_only,
        read_only=read_only,
        create=False)  # record_config makes the directory once the run is known to start.
    self.manager = ocp.CheckpointManager(self.directory, options=options)
    self._async = bool(ckpt_cfg.async_save) and not read_only
    self._last_saved = max(self.all_steps(), default=None)

  def clean_torn_saves(self) -> None:
    """Training only, once the run starts: removes <step>.orbax-checkpoint-tmp* left by a kill
    mid-save (never a committed step; one whose step the run does not reach again would stay)."""
    if self.read_only or jax.process_index() != 0 or not os.path.isdir(self.directory):
      return
    import shutil
    for name in sorted(os.listdir(self.directory)):
      if ".orbax-checkpoint-tmp" in name:
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        logging.warning("Removed the torn, uncommitted save %s/%s.", self.directory, name)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, data_iter=None, *, force: bool = False) -> bool:
    """Saves `step`; one log line (step, sync/async, seconds the loop waited). A failed write
    raises CheckpointWriteError naming the step and the newest committed checkpoint."""
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    os.makedirs(self.directory, exist_ok=True)
    start = time.time()
    try:
      saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(step, e) from e
    if saved:
      logging.info("Checkpoint %d: %s save, %.2f s%s.", step, "async" if self._async else "sync",
                   time.time() - start, " in the loop (written in the background)"
                   if self._async else "")
      self._last_saved = step
    return saved

  def _write_error(self, step, e) -> "CheckpointWriteError":
    committed = [s for s in self.manager.all_steps() if s != step]
    newest = max(committed, default=None)
    where = (f"the newest committed checkpoint is step {newest}, and a rerun resumes from it"
             if newest is not None else "no earlier checkpoint exists")
    detail = (str(e).splitlines() or [""])[0][:300]
    return CheckpointWriteError(f"checkpoint {step} in {self.directory} was not written "
                                f"({type(e).__name__}: {detail}); {where}")

  def restore(self, step: int, target_state, data_iter=None):
    """Restores `step` into arrays shaped and sharded like `target_state`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

  def saved_signature(self, step: int) -> dict:
    """The saved state's leaves (tree_signature), read from the step's metadata alone."""
    from etils import epath
    meta = ocp.StandardCheckpointHandler().metadata(
        epath.Path(os.path.join(self.directory, str(step), "state")))
    signature = tree_signature(getattr(meta, "tree", meta))
    if not signature:  # Orbax warns and returns nothing for missing or truncated metadata.
      raise ValueError(f"no readable tree metadata in {self.directory}/{step}/state")
    return signature

  def newest_step(self, target_state, *, changes=None) -> int | None:
    """The newest step whose metadata reads and whose saved tree holds `target_state`'s leaves,
    compared within `target_state`'s top-level parts only (so a part, e.g. {'ema': ...}, can be
    looked for alone); None if there is none. A mismatch raises ConfigMismatch, as in
    restore_latest; an unreadable step is skipped with a warning."""
    return next(self._matching_steps(target_state, changes, partial=True), None)

  def _matching_steps(self, target_state, changes, *, partial=False):
    """Steps, newest first, whose metadata reads and whose saved tree equals target_state's (with
    `partial`, within target_state's top-level parts only); an unreadable step is skipped with a
    warning, a mismatch raises ConfigMismatch."""
    want = tree_signature(target_state)
    parts = {k.split(".")[0] for k in want} if partial else None
    for step in reversed(self.all_steps()):
      try:
        saved = self.saved_signature(step)
      except Exception as e:  # pylint: disable=broad-except
        self._unreadable(step, e)
        continue
      if partial:
        saved = {k: v for k, v in saved.items() if k.split(".")[0] in parts}
      if saved != want:
        raise run_record.ConfigMismatch(self._mismatch_message(step, saved, want, changes))
      yield step

  def check_holds(self, step: int, target_state) -> None:
    """ConfigMismatch naming the leaves unless checkpoint `step` holds target_state's top-level
    parts with these shapes and dtypes. Read from the metadata, before any array: a read that
    fails midway leaves Orbax's threads printing tracebacks after the error is said."""
    want = tree_signature(target_state)
    parts = {k.split(".")[0] for k in want}
    saved = {k: v for k, v in self.saved_signature(step).items() if k.split(".")[0] in parts}
    if saved != want:
      raise run_record.ConfigMismatch(self._mismatch_message(step, saved, want, None))

  def restore_latest(self, target_state, data_iter=None, *, changes=None):
    """(state, step) of the newest checkpoint that restores, or (None, None) if there is none.

    A checkpoint whose tree or shapes differ from `target_state` raises ConfigMismatch naming
    the leaves and `changes` (the config keys changed since the run was recorded): that is
    another model, not damage. An unreadable step (a kill mid-write, truncated files) is skipped
    with a warning naming it, and, when training (not read_only), renamed <step>.unreadable-<time>
    out of the way of the step number the run will save again; older steps are tried in turn.
    """
    for step in self._matching_steps(target_state, changes):
      try:
        return self.restore(step, target_state, data_iter), step
      except Exception as e:  # pylint: disable=broad-except
        self._unreadable(step, e)
    return None, None

  def _mismatch_message(self, step, saved, want, changes) -> str:
    only_saved = sorted(set(saved) - set(want))
    only_model = sorted(set(want) - set(saved))
    reshaped = sorted(k for k in set(saved) & set(want) if saved[k] != want[k])
    parts = []
    for label, keys in (("only in the checkpoint", only_saved), ("only in this model",
                                                                 only_model)):
      if keys:
        parts.append(f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}")
    for k in reshaped[:4]:
      parts.append(f"{k} is {saved[k]} in the checkpoint, {want[k]} here")
    cause = (f"config keys changed since the run was recorded: {run_record.describe(changes)}"
             if changes else "no config key differs from the recorded run, so the code changed")
    return (f"checkpoint {self.directory}/{step} holds another model's state ({'; '.join(parts)})"
            f"; {cause}. Resume with the recorded values, or use a new --workdir")

  def _unreadable(self, step: int, e: Exception) -> None:
    logging.warning("Checkpoint %s/%d does not restore (%s: %s); trying an older one.",
                    self.directory, step, type(e).__name__, (str(e).splitlines() or [""])[0][:200])
    if not self.read_only:
      self._set_aside(step)

  def _set_aside(self, step: int) -> None:
    """Renames an unreadable step to <step>.unreadable-<time>: kept for inspection, never
    deleted, and out of the way of the step number the resumed run will save again."""
    src = os.path.join(self.directory, str(step))
    if jax.process_index() == 0 and os.path.isdir(src):
      os.replace(src, f"{src}.unreadable-{int(time.time())}")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"pra_jax set aside checkpoint {step}")
    self.manager.reload()

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def saving(self) -> bool:
    """An asynchronous save is still being written."""
    return self.manager.is_saving_in_progress()

  def wait(self):
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      raise self._write_error(self._last_saved, e) from e

  def close(self):
    self.wait()
    self.manager.close()
