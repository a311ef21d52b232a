"""Every config in configs/ loads and passes config_check.validate: the files are documentation
that must stay runnable."""

import importlib
import os

import pytest

from pra_jax import config_check

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
