"""Orbax checkpoints of a whole run: model, optimizer, EMA, step and the data iterator.

A checkpoint is either whole or ignored: Orbax commits a step directory atomically (it is
written under a temporary name and renamed when complete), and a step that fails to restore is
skipped with a warning in favour of the newest one that does.
"""

import json
import os
import time

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

CONFIG_FILE = "config.json"
# The parts of a config that fix the parameter shapes: a checkpoint only fits a model that
# agrees on all of them.
_SHAPE_KEYS = ("data.image_size", "data.channels", "data.num_classes", "model")


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def _shape_config(config_dict: dict) -> dict:
  out = {}
  for key in _SHAPE_KEYS:
    node = config_dict
    for part in key.split("."):
      node = node.get(part, {}) if isinstance(node, dict) else {}
    out[key] = node
  return out


def check_workdir(workdir: str, config, *, overwrite: bool = False) -> None:
  """Refuses a workdir whose checkpoints belong to a model of another shape; records the config.

  Runs before any compilation or data loading, so a wrong workdir costs nothing.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  new = json.loads(config.to_json_best_effort())
  has_checkpoints = os.path.isdir(checkpoint_dir(workdir)) and any(
      name.isdigit() for name in os.listdir(checkpoint_dir(workdir)))
  if has_checkpoints and os.path.exists(path) and not overwrite:
    with open(path) as f:
      old = json.load(f)
    old_shape, new_shape = _shape_config(old), _shape_config(new)
    if old_shape != new_shape:
      diff = sorted(k for k in new_shape if old_shape.get(k) != new_shape[k])
      raise ValueError(
          f"workdir {workdir} holds checkpoints of a different model ({', '.join(diff)} differ "
          f"from {path}); use a new --workdir, or pass --overwrite to start this config there "
          f"(its checkpoints will be replaced as new ones are written)")
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(new, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


class Checkpointer:
  """Saves and restores {'state': nnx state, 'data': grain iterator} under workdir/checkpoints."""

  def __init__(self, workdir: str, ckpt_cfg, *, read_only: bool = False):
    self.directory = checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=ckpt_cfg.max_to_keep,
        enable_async_checkpointing=ckpt_cfg.async_save and not read_only,
        read_only=read_only,
        create=not read_only)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def save(self, step: int, state, data_iter=None, *, force: bool = False) -> bool:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iter)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, step: int, target_state, data_iter=None):
    """Restores `step` into arrays shaped and sharded like `target_state`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target_state)
    items = {"state": ocp.args.StandardRestore(abstract)}
    if data_iter is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iter)
    return self.manager.restore(step, args=ocp.args.Composite(**items))["state"]

  def restore_latest(self, target_state, data_iter=None):
    """(state, step) of the newest checkpoint that restores, or (None, None) if there is none.

    An incomplete or corrupt newest step (a kill mid-write, truncated files) is skipped with a
    warning naming it; older committed steps are tried in turn.
    """
    for step in reversed(self.all_steps()):
      try:
        return self.restore(step, target_state, data_iter), step
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Checkpoint %s/%d does not restore (%s: %s); trying an older one.",
                        self.directory, step, type(e).__name__, str(e).splitlines()[0][:200])
        self._set_aside(step)
    return None, None

  def _set_aside(self, step: int) -> None:
    """Renames an unreadable step to <step>.unreadable: kept for inspection, never deleted, and
    out of the way of the step number the resumed run will save again."""
    src = os.path.join(self.directory, str(step))
    if jax.process_index() == 0 and os.path.isdir(src):
      os.replace(src, f"{src}.unreadable-{int(time.time())}")
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"pra_jax set aside checkpoint {step}")
    self.manager.reload()

  def reached_preemption(self, step: int) -> bool:
    return self.manager.reached_preemption(step)

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
