"""The run's record and the rules of its workdir: which config may resume or read a run's
checkpoints (workdir/config.json), and the history of what a resume changed
(workdir/config_history.jsonl).

Reading never changes a workdir: a config that disagrees with the run's is refused before any
restore, naming the keys. Which keys count is each field's declared role (config_schema):
an IDENTITY key fixes the parameters' shapes or meaning and must match; a RUN_TIME key may change
on resume, and the change is logged and recorded. A change that alters the optimizer's state
tree (train.grad_clip to or from 0) is caught later by comparing the checkpoint's tree with the
model's (checkpoint.Checkpointer), and refused naming the changed keys.
"""

import dataclasses
import datetime
import json
import os

import jax
from absl import logging
from flax import traverse_util

from pra_jax import config_schema, files

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"


class ConfigMismatch(ValueError):
  """This config cannot read or resume the workdir's checkpoints (a user error)."""
  pra_jax_user_error = True


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def is_identity_key(key: str) -> bool:
  """A key whose change makes the checkpoints another run's (its declared role)."""
  return config_schema.role(key) is config_schema.IDENTITY


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
  """{dotted key: (old value, new value)} for every key that differs (missing = '<absent>').

  A declared key missing from the recorded `old` was added to pra_jax after that run was
  recorded: the run behaved as its declared default, which a new field keeps what the code did
  before it (train.ema_decays = (): no extra EMA). So it compares as that default, and a run
  recorded by an older pra_jax stays readable and resumable."""
  a = traverse_util.flatten_dict(old, sep=".")
  b = traverse_util.flatten_dict(new, sep=".")
  absent = "<absent>"
  before = lambda k: a[k] if k in a else (
      json.loads(json.dumps(config_schema.BY_KEY[k].default))   # As config.json holds it.
      if k in config_schema.BY_KEY else absent)
  return {k: (before(k), b.get(k, absent)) for k in sorted(set(a) | set(b))
          if before(k) != b.get(k, absent)}


def describe(changes: dict, limit: int = 8) -> str:
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


def check_workdir_writable(workdir: str) -> None:
  """The workdir is a directory this user may write, or a path where one can be made; checked
  before a model is built, so a run never fails at its first write. Writes nothing."""
  path = os.path.abspath(workdir)
  if os.path.exists(path) and not os.path.isdir(path):
    raise NotADirectoryError(f"workdir {workdir!r} is a file; expected a directory (or a path "
                             f"where one can be created)")
  existing = path
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise NotADirectoryError(f"workdir {workdir!r} cannot be created: {existing!r} is a file; "
                             f"expected a directory path")
  if not os.access(existing, os.W_OK | os.X_OK):
    which = "is" if existing == path else f"cannot be created: its parent {existing!r} is"
    raise PermissionError(f"workdir {workdir!r} {which} not writable; expected a directory this "
                          f"user can write")


def check_workdir(workdir: str, config, *, overwrite: bool = False) -> WorkdirPlan:
  """Reads the workdir and decides; writes nothing (record_config does, once the run starts).

  Refuses a workdir that cannot be written, and checkpoints of another run (an identity key
  differs from workdir/config.json) unless `overwrite`, naming each key with both values.
  """
  check_workdir_writable(workdir)
  new = config_dict(config)
  old = read_run_config(workdir)
  if old is None or not has_checkpoints(workdir):
    return WorkdirPlan(workdir, new, {}, False)
  changes = config_changes(old, new)
  identity = {k: v for k, v in changes.items() if is_identity_key(k)}
  if identity and not overwrite:
    raise ConfigMismatch(
        f"workdir {workdir} holds checkpoints of another run: {describe(identity)} (recorded "
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
        f"this config does not match the run in {workdir}: {describe(identity)} (recorded in "
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
