"""Orbax checkpoints of a whole run: model, optimizer, EMA, step and the data iterator, and the
run's config record (workdir/config.json, workdir/config_history.jsonl).

A checkpoint is either whole or ignored: Orbax commits a step directory atomically (it is
written under a temporary name and renamed when complete). Reading never changes a workdir:
a config that disagrees with the run's is refused before any restore, naming the keys, and a
checkpoint whose tree differs from the model's is a config mismatch, never corruption. Only a
training run that matched the config sets aside a step that does not restore.
"""

import dataclasses
import datetime
import json
import os
import time

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging

from pra_jax import files

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"

# What makes a checkpoint another run's: the keys that fix the parameter shapes and tree, or what
# the parameters mean. The whole model section counts, except the run-time keys listed below (a
# model key added later is refused until someone decides it is run-time). Every other section
# (train, rollout, loss, eval, sample, checkpoint, sharding, the data paths) is run-time: a
# resume may change it, and the change is logged and appended to config_history.jsonl. A change
# that alters the optimizer's state tree (train.grad_clip to or from 0) is caught by comparing
# the checkpoint's tree with the model's, and refused naming the changed keys.
IDENTITY_KEYS = ("seed", "data.source", "data.tfds_name", "data.image_size", "data.channels",
                 "data.num_classes", "model")
RUN_TIME_MODEL_KEYS = (
    "model.label_drop",               # Training recipe: how often the null class is drawn.
    "model.backbone.remat_policy",    # Memory/compute trade of the same function.
    "model.backbone.dtype",           # Compute dtype; parameters keep param_dtype.
    "model.head.dtype",
    "model.state.dtype",
    "model.head.num_draws",           # Noise draws per position per step: a loss estimator.
    "model.head.time_sampling",       # Training-time law of the flow time.
    "model.head.logit_mean",
    "model.head.logit_std",
)


class ConfigMismatch(ValueError):
  """This config cannot read or resume the workdir's checkpoints (a user error)."""
  pra_jax_user_error = True


class CheckpointWriteError(OSError):
  """A save failed (disk full, permissions, I/O): the previous committed checkpoint stands."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def flatten(tree: dict, prefix: str = "") -> dict:
  """Nested config dict -> {'model.backbone.width': 768, ...}."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict) and v:
      out.update(flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def is_identity_key(key: str) -> bool:
  if key in RUN_TIME_MODEL_KEYS:
    return False
  return any(key == k or key.startswith(k + ".") for k in IDENTITY_KEYS)


def config_dict(config) -> dict:
  return json.loads(config.to_json_best_effort())


def read_run_config(workdir: str) -> dict | None:
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigMismatch(f"{path} is not readable JSON ({e}); restore it from a backup, or "
                         f"start a new --workdir") from e


def _tuples(tree):
  # JSON has no tuples: the schema's only sequences are tuples (train.weight_decay_on).
  if isinstance(tree, dict):
    return {k: _tuples(v) for k, v in tree.items()}
  return tuple(_tuples(v) for v in tree) if isinstance(tree, list) else tree


def config_or_recorded(config, workdir: str):
  """`config` if given, else the run's own config from workdir/config.json (with every
  command-line override it trained with): what the programs that read a run use without
  --config."""
  if config is not None:
    return config
  import ml_collections  # Imported here: only the readers of a run need it.

  recorded = read_run_config(workdir)
  if recorded is None:
    raise FileNotFoundError(f"{os.path.join(workdir, CONFIG_FILE)} does not exist, so the run's "
                            f"config is unknown: is --workdir={workdir} a training run's workdir? "
                            f"Otherwise pass --config (and the run's --config.* overrides)")
  return ml_collections.ConfigDict(_tuples(recorded))


def config_changes(old: dict, new: dict) -> dict:
  """{dotted key: (old value, new value)} for every key that differs (missing = '<absent>')."""
  a, b = flatten(old), flatten(new)
  absent = "<absent>"
  return {k: (a.get(k, absent), b.get(k, absent)) for k in sorted(set(a) | set(b))
          if a.get(k, absent) != b.get(k, absent)}


def _describe(changes: dict, limit: int = 8) -> str:
  items = [f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items()]
  more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
  return "; ".join(items[:limit]) + more


def has_checkpoints(workdir: str) -> bool:
  d = checkpoint_dir(workdir)
  return os.path.isdir(d) and any(name.isdigit() for name in os.listdir(d))


@dataclasses.dataclass
class WorkdirPlan:
  """What a training run will do with its workdir, decided before anything is written."""
  workdir: str
  config: dict
  changes: dict            # Run-time keys changed since the recorded config (resume only).
  replace_checkpoints: bool  # --overwrite over another model's checkpoints: set them aside.


def check_workdir(workdir: str, config, *, overwrite: bool = False) -> WorkdirPlan:
  """Reads the workdir and decides; writes nothing (record_config does, once the run starts).

  Refuses checkpoints of another run (an identity key differs from workdir/config.json) unless
  `overwrite`, naming each key with both values.
  """
  new = config_dict(config)
  old = read_run_config(workdir)
  if old is None or not has_checkpoints(workdir):
    return WorkdirPlan(workdir, new, {}, False)
  changes = config_changes(old, new)
  identity = {k: v for k, v in changes.items() if is_identity_key(k)}
  if identity and not overwrite:
    raise ConfigMismatch(
        f"workdir {workdir} holds checkpoints of another run: {_describe(identity)} (recorded "
        f"in {os.path.join(workdir, CONFIG_FILE)} -> this config). Use the recorded values, a "
        f"new --workdir, or --overwrite to start this config there (the old checkpoints are "
        f"kept under checkpoints.replaced-<time>)")
  if identity:
    return WorkdirPlan(workdir, new, {}, True)
  return WorkdirPlan(workdir, new, changes, False)


def check_readable(workdir: str, config) -> None:
  """For reads (sampling, probes): refuses a config that is not the run's. Writes nothing."""
  if not has_checkpoints(workdir):
    raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(workdir)}: train first with "
                            f"python -m pra_jax.main --config=... --workdir={workdir}")
  old = read_run_config(workdir)
  if old is None:
    return  # A workdir from before config.json was recorded: the tree comparison still guards.
  identity = {k: v for k, v in config_changes(old, config_dict(config)).items()
              if is_identity_key(k)}
  if identity:
    raise ConfigMismatch(
        f"this config does not match the run in {workdir}: {_describe(identity)} (recorded in "
        f"{os.path.join(workdir, CONFIG_FILE)} -> this config). Pass the run's --config (or "
        f"those values as flags)")


def record_config(plan: WorkdirPlan, step: int) -> None:
  """Once the run is known to start: config.json, the history line, the overwrite's set-aside."""
  if jax.process_index() == 0:
    workdir = plan.workdir
    os.makedirs(workdir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    if plan.replace_checkpoints:
      aside = f"{checkpoint_dir(workdir)}.replaced-{stamp}"
      os.replace(checkpoint_dir(workdir), aside)
      logging.warning("--overwrite: the previous run's checkpoints were moved to %s.", aside)
    for key, (old, new) in plan.changes.items():
      logging.warning("Resuming with config %s changed: %r -> %r.", key, old, new)
    if plan.changes or plan.replace_checkpoints or not os.path.exists(
        os.path.join(workdir, HISTORY_FILE)):
      event = ("overwrite" if plan.replace_checkpoints else "resume" if plan.changes else "start")
      line = {"time": stamp, "event": event, "step": step,
              "changes": {k: list(v) for k, v in plan.changes.items()}}
      with open(os.path.join(workdir, HISTORY_FILE), "a") as f:
        f.write(json.dumps(line, sort_keys=True) + "\n")
    path = os.path.join(workdir, CONFIG_FILE)
    files.write_json(path, plan.config, indent=2, sort_keys=True)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("pra_jax recorded the config")


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
    self.directory = checkpoint_dir(workdir)
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
    want = tree_signature(target_state)
    parts = {k.split(".")[0] for k in want}
    for step in reversed(self.all_steps()):
      try:
        saved = self.saved_signature(step)
      except Exception as e:  # pylint: disable=broad-except
        self._unreadable(step, e)
        continue
      saved = {k: v for k, v in saved.items() if k.split(".")[0] in parts}
      if saved != want:
        raise ConfigMismatch(self._mismatch_message(step, saved, want, changes))
      return step
    return None

  def restore_latest(self, target_state, data_iter=None, *, changes=None):
    """(state, step) of the newest checkpoint that restores, or (None, None) if there is none.

    A checkpoint whose tree or shapes differ from `target_state` raises ConfigMismatch naming
    the leaves and `changes` (the config keys changed since the run was recorded): that is
    another model, not damage. An unreadable step (a kill mid-write, truncated files) is skipped
    with a warning naming it, and, when training (not read_only), renamed <step>.unreadable-<time>
    out of the way of the step number the run will save again; older steps are tried in turn.
    """
    want = tree_signature(target_state)
    for step in reversed(self.all_steps()):
      try:
        saved = self.saved_signature(step)
      except Exception as e:  # pylint: disable=broad-except
        self._unreadable(step, e)
        continue
      if saved != want:
        raise ConfigMismatch(self._mismatch_message(step, saved, want, changes))
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
    cause = (f"config keys changed since the run was recorded: {_describe(changes)}"
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
