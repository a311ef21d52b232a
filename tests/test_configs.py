"""Every config in configs/ loads and passes config_check.validate: the files are documentation
that must stay runnable."""

import dataclasses
import importlib
import os

import pytest

from configs import common
from pra_jax import config_check, config_schema

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
NAMES = sorted(f[:-3] for f in os.listdir(CONFIG_DIR)
               if f.endswith(".py") and f not in ("__init__.py", "common.py"))


def test_the_config_folder_is_found():
  assert {"demo", "tiny", "pra_s", "pra_b", "pra_l"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_loads_and_validates(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  config_check.validate(config)


def test_weight_decay_names_are_checked():
  config = importlib.import_module("configs.tiny").get_config()
  config.train.weight_decay_on = ("kernel", "kernels")
  with pytest.raises(ValueError, match="train.weight_decay_on"):
    config_check.validate(config)


# --- pra_jax/config_schema.py declares every field once --------------------------------------


@pytest.mark.parametrize("name", NAMES + ["common"])
def test_every_leaf_of_every_config_has_a_declaration(name):
  """A config cannot carry a field the schema does not declare (its role would be unknown), and
  the base config is exactly the declarations."""
  module = importlib.import_module(f"configs.{name}")
  config = module.base_config() if name == "common" else module.get_config()
  undeclared = [k for k in config_check.flat_keys(config) if k not in config_schema.BY_KEY]
  assert undeclared == []
  assert sorted(config_check.flat_keys(common.base_config())) == sorted(config_schema.BY_KEY)


def test_every_declaration_has_a_role_and_a_comment():
  for f in config_schema.FIELDS:
    assert isinstance(f.role, config_schema.Role) and f.doc.strip(), f.key
  with pytest.raises(TypeError, match="role must be IDENTITY or RUN_TIME"):
    config_schema.Field("train.new_knob", 1, None, "a field without a role")
  with pytest.raises(TypeError, match="has no comment"):
    config_schema.Field("train.new_knob", 1, config_schema.RUN_TIME, " ")


def test_allowed_values_are_the_modules_own_constants():
  """The schema lists no values of its own: each `choices` is a tuple defined by the module that
  reads the field."""
  from pra_jax import data, optim, rollout
  from pra_jax.sampling import ar_loop
  from pra_jax.models import attention, backbone, head, layers, state
  modules = (data, optim, rollout, ar_loop, attention, backbone, head, layers, state)
  constants = [v for m in modules for v in vars(m).values() if isinstance(v, tuple)]
  for f in config_schema.FIELDS:
    if f.choices is not None:
      assert any(f.choices is c for c in constants), f"{f.key}: {f.choices} is not a constant"
  choices = {f.key: f.choices for f in config_schema.FIELDS}
  assert choices["sample.solver"] is head.SOLVERS
  assert choices["sample.cfg_schedule"] is ar_loop.CFG_SCHEDULES
  assert choices["data.source"] is data.SOURCES
  assert choices["train.lr_schedule"] is optim.LR_SCHEDULES
  assert choices["rollout.mode"] is rollout.MODES


@pytest.mark.parametrize("key, value, message", [
    ("sample.solver", "rk4", r"config sample.solver='rk4' is not one of \('euler', 'heun'\)"),
    ("sample.cfg_schedule", "cosine", "config sample.cfg_schedule='cosine' is not one of"),
    ("rollout.mode", "scheduled_sampling", "config rollout.mode='scheduled_sampling' is not one"),
    ("model.state.project", 1, "config model.state.project must be True or False, got 1"),
    ("model.label_drop", 1.0, r"config model.label_drop must be a number in \[0.0, 1.0\)"),
    ("data.worker_count", -1, r"config data.worker_count must be an integer in \[0, inf\)"),
])
def test_a_value_is_checked_against_its_declaration(key, value, message):
  config = importlib.import_module("configs.tiny").get_config()
  with config.unlocked(), config.ignore_type():
    node = config
    *sections, leaf = key.split(".")
    for part in sections:
      node = node[part]
    node[leaf] = value
  with pytest.raises(ValueError, match=message):
    config_check.validate(config)


def test_tfds_data_dir_is_set_on_the_command_line(tmp_path):
  """--config.data.tfds_data_dir=DIR works (a None default refused every override); '' is unset:
  the data reader falls back to $TFDS_DATA_DIR or TFDS's default."""
  from absl import flags
  from ml_collections import config_flags
  argv = ["prog", f"--config={os.path.join(CONFIG_DIR, 'pra_s.py')}",
          f"--config.data.tfds_data_dir={tmp_path}"]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=values, sys_argv=argv)
  values(argv)
  assert values.config.data.tfds_data_dir == str(tmp_path)
  config_check.validate(values.config)
  assert common.base_config().data.tfds_data_dir == ""


def test_the_field_listing_names_every_field_with_its_role():
  text = config_schema.listing()
  for f in config_schema.FIELDS:
    assert f.key in text
  assert "model.backbone.attention" in text and "run-time" in text and "identity" in text


def test_sample_settings_take_every_value_from_config_sample():
  """SampleSettings has no defaults of its own that could disagree with config.sample's."""
  from pra_jax.sampling import ar_loop
  sample_cfg = common.base_config().sample
  fields = {f.name: f for f in dataclasses.fields(ar_loop.SampleSettings)}
  defaulted = sorted(n for n, f in fields.items() if f.default is not dataclasses.MISSING)
  assert defaulted == ["use_cache"]  # A check-only knob, not a config field.
  settings = ar_loop.SampleSettings.from_config(sample_cfg)
  for name in fields.keys() - {"use_cache"}:
    assert getattr(settings, name) == sample_cfg[name], name
