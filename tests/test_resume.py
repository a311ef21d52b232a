"""Reads and restarts that must not lose a run: a read with the wrong config, resumes across
run-time changes, optimizer-tree changes, failed starts, bad values, a save that fails.

One tiny run trained once per module; each destructive test works on its own copy."""

import json
import os
import resource
import shutil
import signal

import pytest
from absl import logging as absl_logging

from configs import tiny
from pra_jax import checkpoint, config_check, restore, run_record, train


def _config(**train_overrides):
  config = tiny.get_config()
  config.train.lr_schedule = "constant"  # As tests/test_survival.py: one compiled step for all.
  config.train.log_every = 1
  config.train.num_steps = 2
  for k, v in train_overrides.items():
    config.train[k] = v
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  train.train_and_evaluate(_config(), workdir)
  return workdir


@pytest.fixture
def run(trained, tmp_path):
  """A private copy of the trained workdir (checkpoint 2)."""
  workdir = str(tmp_path / "run")
  shutil.copytree(trained, workdir)
  return workdir


def _listing(workdir):
  return sorted(os.listdir(os.path.join(workdir, "checkpoints")))


def test_read_with_the_wrong_config_is_refused_and_moves_nothing(run):
  before = _listing(run)
  config = _config()
  config.model.state.decoder_context = True
  # ValueError: the type the old code raised too, so a test run on it fails on what it did.
  with pytest.raises(ValueError, match=r"model\.state\.decoder_context: False -> True"):
    restore.restore_for_sampling(config, run)
  # Without config.json the tree comparison still refuses, and still moves nothing.
  os.remove(os.path.join(run, run_record.CONFIG_FILE))
  with pytest.raises(ValueError, match="only in this model"):
    restore.restore_for_sampling(config, run)
  assert _listing(run) == before
  # The right config still reads step 2.
  model, _, step = restore.restore_for_sampling(_config(), run)
  assert step == 2


def test_a_run_recorded_before_a_field_existed_reads_it_as_its_default(run):
  """A config.json written by an older pra_jax lacks the fields added since; the run behaved as
  their defaults, so it stays readable (it was refused: 'train.ema_decays: <absent> -> []'), and
  a value other than the default is still another run."""
  path = os.path.join(run, run_record.CONFIG_FILE)
  with open(path) as f:
    recorded = json.load(f)
  del recorded["train"]["ema_decays"]
  with open(path, "w") as f:
    json.dump(recorded, f)
  run_record.check_readable(run, _config())
  model, _, step = restore.restore_for_sampling(_config(), run)
  assert step == 2
  with pytest.raises(ValueError, match=r"train\.ema_decays: \[\] -> \[0\.9\]"):
    run_record.check_readable(run, _config(ema_decays=(0.9,)))


def test_optimizer_tree_change_is_refused_naming_the_key(run):
  before = _listing(run)
  config = _config(grad_clip=0.0, num_steps=3)  # No clip: the optimizer state loses a node.
  with pytest.raises(ValueError, match=r"train\.grad_clip: 3\.0 -> 0\.0"):
    train.train_and_evaluate(config, run)
  assert _listing(run) == before  # Nothing set aside as unreadable, no step 3.


def test_only_identity_keys_refuse_a_resume(trained):
  """The decision, for the keys the issue names (each would cost a compile end to end)."""
  for key, value in (("model.backbone.remat_policy", "full"), ("model.label_drop", 0.2),
                     ("model.head.num_draws", 3), ("rollout.mode", "teacher"),
                     ("train.lr", 5e-4), ("sharding.mesh.fsdp", 2)):
    config = _config()
    config_check.set_field(config, key, value)
    plan = run_record.check_workdir(trained, config)
    assert list(plan.changes) == [key] and not plan.replace_checkpoints, (key, plan.changes)
  for key, value in (("model.backbone.width", 64), ("model.state.decoder_context", True),
                     ("data.image_size", 8), ("seed", 1)):
    config = _config()
    config_check.set_field(config, key, value)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
      run_record.check_workdir(trained, config)


def test_attention_kernel_may_change_on_resume(trained):
  """The same function and parameters in every kernel: a run trained with 'xla' resumes on a
  TPU with 'splash' (or a GPU with 'cudnn'). Its role is declared with the field, so no
  allow-list can leave it out (the old one did, and refused this resume)."""
  for kernel in ("splash", "cudnn"):
    config = _config()
    config_check.set_field(config, "model.backbone.attention", kernel)
    plan = run_record.check_workdir(trained, config)
    assert plan.changes == {"model.backbone.attention": ("xla", kernel)}
    assert not plan.replace_checkpoints


def test_resume_accepts_run_time_changes_and_records_them(run, caplog):
  # Changes that leave the compiled step alone (the cache serves it); remat etc. above.
  config = _config(num_steps=3, log_every=2)
  config.sample.cfg = 1.5
  config.checkpoint.max_to_keep = 5
  caplog.set_level("INFO")
  absl_logging.set_verbosity(absl_logging.INFO)   # Whatever an earlier test in this worker set.
  train.train_and_evaluate(config, run)
  messages = [r.getMessage() for r in caplog.records]
  assert any("Resumed from" in m and "at step 2" in m for m in messages), messages[-20:]
  assert any("config sample.cfg changed: 2.0 -> 1.5" in m for m in messages), messages[-20:]
  assert any(m.startswith("Checkpoint 3: sync save, ") for m in messages)  # One line per save.
  with open(os.path.join(run, run_record.HISTORY_FILE)) as f:
    history = [json.loads(line) for line in f]
  assert history[0]["event"] == "start" and history[-1]["event"] == "resume"
  assert history[-1]["step"] == 2
  assert history[-1]["changes"] == {"checkpoint.max_to_keep": [3, 5], "sample.cfg": [2.0, 1.5],
                                    "train.log_every": [1, 2], "train.num_steps": [2, 3]}
  with open(os.path.join(run, run_record.CONFIG_FILE)) as f:
    assert json.load(f)["sample"]["cfg"] == 1.5
  assert _listing(run)[-1] == "3"


def test_failed_starts_write_nothing(run, tmp_path):
  fresh = str(tmp_path / "fresh")
  config = _config()
  config.sharding.mesh.data = 4  # More devices than there are.
  with pytest.raises(ValueError, match="needs 4 devices"):
    train.train_and_evaluate(config, fresh)
  config = _config()
  config.data.source, config.data.folder = "folder", str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    train.train_and_evaluate(config, fresh)
  assert not os.path.exists(fresh)

  # A failed --overwrite leaves the recorded config, so the original run still resumes.
  recorded = open(os.path.join(run, run_record.CONFIG_FILE)).read()
  config.model.backbone.width = 64
  with pytest.raises(FileNotFoundError, match="nowhere"):
    train.train_and_evaluate(config, run, overwrite=True)
  assert open(os.path.join(run, run_record.CONFIG_FILE)).read() == recorded
  assert _listing(run) == ["2"]
  train.train_and_evaluate(_config(num_steps=3), run)
  assert _listing(run)[-1] == "3"


def test_overwrite_keeps_the_old_checkpoints_aside(run):
  config = _config(num_steps=1)
  config.data.tfds_name = "other"  # Another run (an identity key), same compiled step.
  train.train_and_evaluate(config, run, overwrite=True)
  assert _listing(run) == ["1"]
  aside = [n for n in os.listdir(run) if n.startswith("checkpoints.replaced-")]
  assert len(aside) == 1 and os.listdir(os.path.join(run, aside[0])) == ["2"]


def test_max_to_keep_zero_is_refused_and_deletes_nothing(run):
  config = _config(num_steps=3)
  config.checkpoint.max_to_keep = 0
  with pytest.raises(ValueError, match="checkpoint.max_to_keep must be a positive integer"):
    train.train_and_evaluate(config, run)
  assert _listing(run) == ["2"]


def test_a_save_that_fails_leaves_the_previous_checkpoint(run, monkeypatch):
  """A full disk, in-process: a file-size limit makes every write past 4 KiB fail (EFBIG) during
  the save of step 4 only; the run stops naming both steps, and a rerun resumes from 2."""
  original = checkpoint.Checkpointer.save

  def save_on_a_full_disk(self, step, *args, **kwargs):
    if step != 4:
      return original(self, step, *args, **kwargs)
    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limits[1]))
    try:
      return original(self, step, *args, **kwargs)
    finally:
      resource.setrlimit(resource.RLIMIT_FSIZE, limits)
      signal.signal(signal.SIGXFSZ, handler)

  monkeypatch.setattr(checkpoint.Checkpointer, "save", save_on_a_full_disk)
  with pytest.raises(OSError,
                     match=r"checkpoint 4 .* was not written .*newest committed checkpoint is "
                           r"step 2"):
    train.train_and_evaluate(_config(num_steps=4), run)
  assert [n for n in _listing(run) if n.isdigit()] == ["2"]
  monkeypatch.setattr(checkpoint.Checkpointer, "save", original)
  train.train_and_evaluate(_config(num_steps=4), run)
  assert _listing(run) == ["2", "4"]  # Resumed from 2; the torn save of 4 was cleaned up.


def test_orbax_save_tracebacks_are_debug_lines(tmp_path):
  """A full disk makes each Orbax writer's task fail; asyncio logs every one with its traceback
  as the tasks are collected, after the run's one line. Those go to debug level."""
  import logging as std_logging
  from pra_jax import quiet
  fake = str(tmp_path / "site-packages" / "orbax" / "checkpoint" / "serialization.py")
  namespace = {}
  exec(compile("def write():\n  raise ValueError('Failed writing: File too large')\n", fake,
               "exec"), namespace)
  try:
    namespace["write"]()
  except ValueError as e:
    exc_info = (type(e), e, e.__traceback__)
  seen = []
  handler = std_logging.Handler()
  handler.emit = seen.append
  logger = std_logging.getLogger("asyncio")
  logger.addHandler(handler)
  quiet.quiet_library_logs()
  verbosity = absl_logging.get_verbosity()
  try:
    logger.error("Task exception was never retrieved", exc_info=exc_info)
    assert not seen   # Not shown at the default verbosity.
    logger.error("an error of pra_jax's own")
    assert [r.levelname for r in seen] == ["ERROR"]
    absl_logging.set_verbosity(absl_logging.DEBUG)
    logger.error("Task exception was never retrieved", exc_info=exc_info)
    assert [r.levelname for r in seen] == ["ERROR", "DEBUG"]
  finally:
    absl_logging.set_verbosity(verbosity)
    logger.removeHandler(handler)


@pytest.mark.parametrize("key,value,match", [
    ("train.lr", -1.0, r"train.lr must be a number in \(0.0, inf\), got -1.0"),
    ("model.backbone.remat_policy", "bogus", "remat_policy must be 'none', 'full'"),
    ("eval.num_images", 0, r"eval.num_images must be an integer in \[1, inf\), got 0"),
    ("sample.cfg", -2.0, r"sample.cfg must be a number in \[0.0, inf\)"),
    ("checkpoint.max_to_keep", 0, "max_to_keep must be a positive integer"),
])
def test_bad_values_are_refused_before_anything_runs(key, value, match, tmp_path):
  config = _config()
  config_check.set_field(config, key, value)
  with pytest.raises(ValueError, match=match) as err:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert getattr(err.value, "pra_jax_user_error", False)  # Marked for one-line reporting.
  assert not os.path.exists(tmp_path / "run")
