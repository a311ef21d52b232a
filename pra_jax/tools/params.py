"""Parameter count of a config, per component and per sub-module, without allocating the model.

  python -m pra_jax.tools.params --config=configs/pra_l.py
"""

from absl import app
from ml_collections import config_flags

from pra_jax import cli, config_check
from pra_jax.models import pra

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file to count.")


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  if _CONFIG.value is None:
    cli.usage_error("--config is required, e.g. --config=configs/pra_l.py")
  with cli.user_input():
    config_check.validate(_CONFIG.value)
  print(pra.param_table(_CONFIG.value))


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
