"""Linear probe of a trained run's frozen backbone (pra_jax/studies/linear_probe.py has the recipe).

  python -m pra_jax.probe --workdir=/tmp/pra_demo [--layer=2 | --layer=1,2,3]
"""

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from pra_jax import cli, restore, run_record
from pra_jax.studies import linear_probe

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file of the run (default: the run's own, WORKDIR/config.json).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with checkpoints.")
_LAYER = flags.DEFINE_list("layer", None, "Backbone block(s) to probe (default: the middle one; "
                           "-1: the final output); several, comma-separated, are concatenated.")
_MAX_TRAIN_IMAGES = flags.DEFINE_integer("max_train_images", None,
                                         "Cap on training images for the probe.")
_EPOCHS = flags.DEFINE_integer("epochs", linear_probe.DEFAULT_EPOCHS, "Probe training epochs.")
_CONTROL = flags.DEFINE_bool("control", False,
                             "Also probe a freshly initialised backbone of the same config.")


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  if _WORKDIR.value is None:
    cli.usage_error("--workdir is required")
  try:
    layers = None if _LAYER.value is None else [int(l) for l in _LAYER.value]
  except ValueError:
    cli.usage_error(f"--layer={','.join(_LAYER.value)}: expected integers such as 2 or "
                             f"1,2,3")
  for name, holder in (("epochs", _EPOCHS), ("max_train_images", _MAX_TRAIN_IMAGES)):
    if holder.value is not None and holder.value < 1:
      cli.usage_error(f"--{name} must be a positive integer, got {holder.value}")
  with cli.user_input():
    config = run_record.config_or_recorded(_CONFIG.value, _WORKDIR.value)
  depth = config.model.backbone.depth
  bad = [l for l in layers or () if not -depth <= l < depth]   # The backbone's own range.
  if bad:
    cli.usage_error(f"--layer: {bad} are not blocks of this backbone; expected "
                             f"integers in [-{depth}, {depth}) (model.backbone.depth={depth})")
  model, _, step = restore.restore_for_sampling(config, _WORKDIR.value)
  layer = layers if layers is None or len(layers) > 1 else layers[0]  # None: probe()'s default.
  result = linear_probe.probe(model, config, layer=layer, max_train_images=_MAX_TRAIN_IMAGES.value,
                       epochs=_EPOCHS.value, control=_CONTROL.value)
  result["step"] = step
  name = "_".join(map(str, [result["layer"]] if isinstance(result["layer"], int)
                      else result["layer"]))
  path = os.path.join(_WORKDIR.value, f"probe_layer{name}.json")
  with open(path, "w") as fh:
    json.dump(result, fh, indent=2)
  logging.info("Probe: %s", result)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
