"""Parameter count of a config, per component and per sub-module, without allocating the model.

  python -m pra_jax.tools.params --config=configs/pra_l.py
"""

from absl import app
from ml_collections import config_flags

from pra_jax.models import pra

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file to count.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/pra_l.py")
  print(pra.param_table(_CONFIG.value))


if __name__ == "__main__":
  app.run(main)
