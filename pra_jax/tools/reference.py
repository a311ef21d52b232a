"""Writes an ADM-format reference batch from real images, for pra_jax.evaluate --ref.

From the TFDS records a run trains on (its held-out split, data.eval_split, with the run's own
decoding, resize and centre crop), streamed: memory stays the same whatever the image count:

  python -m pra_jax.tools.reference --config=configs/pra_s.py --inception=inception_fid.npz \
      --out=ref_val256.npz [--config.data.tfds_data_dir=DIR] [--config.data.eval_split=train]

From a folder of equally sized image files or an .npz with uint8 NHWC arr_0 (held in memory;
center-crop and resize them to the sample resolution first, as ADM's reference batches are):

  python -m pra_jax.tools.reference --images=val_256/ --inception=inception_fid.npz --out=ref.npz

The file holds mu, sigma (pool_3) and mu_s, sigma_s (sFID's spatial features) of all the images,
and arr_0: a seeded random subset of --num_pr_images of them for precision/recall (0 = no arr_0).
"""

import os

from absl import app, flags
from ml_collections import config_flags

from pra_jax import cli, config_check, data
from pra_jax.metrics import fid, inception, scoring, streamed_reference

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config whose data section names the records (its data.eval_split is read).")
_IMAGES = flags.DEFINE_string("images", None,
                              "Folder of image files, or .npz with uint8 NHWC arr_0.")
_INCEPTION = flags.DEFINE_string("inception", None,
                                 f"Inception weights .npz. {inception.WEIGHTS_HOWTO}")
_OUT = flags.DEFINE_string("out", None, "Where to write the reference .npz.")
_NUM_PR_IMAGES = flags.DEFINE_integer(
    "num_pr_images", 10000, "Images kept as arr_0 for precision/recall (ADM: 10k; 0 = none).")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 200,
                                   "Images per Inception batch, over all local devices.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the arr_0 subset.")


def _from_records(config, model) -> str:
  """Streams the config's held-out split through Inception into --out."""
  split = config.data.eval_split
  num_images = len(data.make_source(config.data, split))
  iterator = data.make_eval_iterator(config.data, local_batch_size=_BATCH_SIZE.value,
                                     process_index=0, process_count=1)
  try:
    ref = streamed_reference.write_reference(
        (b["image"] for b in iterator), num_images,
        streamed_reference.inception_features(model, _BATCH_SIZE.value), _OUT.value,
        _NUM_PR_IMAGES.value, _SEED.value)
  finally:
    iterator.close()
  return (f"mu/sigma and mu_s/sigma_s of the {num_images} images of {config.data.tfds_name} "
          f"{split!r} (data.source={config.data.source}), {ref['num_pr_images']} as arr_0")


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  if (_CONFIG.value is None) == (_IMAGES.value is None):
    cli.usage_error("give one of --config (read the run's TFDS records) and --images "
                             "(a folder or .npz)")
  for name, value in (("inception", _INCEPTION.value), ("out", _OUT.value)):
    if not value:
      cli.usage_error(f"--{name} is required")
  if _NUM_PR_IMAGES.value < 0 or _BATCH_SIZE.value < 1:
    cli.usage_error(f"--num_pr_images must be >= 0 and --batch_size >= 1, got "
                             f"{_NUM_PR_IMAGES.value}, {_BATCH_SIZE.value}")
  with cli.user_input():  # A bad folder, file or config fails before any compile.
    if _CONFIG.value is not None:
      config_check.validate(_CONFIG.value)
      data.make_source(_CONFIG.value.data, _CONFIG.value.data.eval_split)
    else:
      if not os.path.isdir(_IMAGES.value):
        scoring.check_samples_file(_IMAGES.value, need_labels=False)   # Headers: no zip errors.
      images = fid.load_images(_IMAGES.value)
    out_dir = os.path.dirname(os.path.abspath(_OUT.value))
    if not os.path.isdir(out_dir):
      raise FileNotFoundError(f"--out={_OUT.value}: folder {out_dir} does not exist")
    scoring.check_inception_file(_INCEPTION.value)
    model = inception.load_inception(_INCEPTION.value)
  if _CONFIG.value is not None:
    what = _from_records(_CONFIG.value, model)
  else:
    ref = fid.compute_reference(images, model, _OUT.value, _BATCH_SIZE.value,
                                _NUM_PR_IMAGES.value, _SEED.value)
    kept = len(ref["arr_0"]) if "arr_0" in ref else 0
    what = f"mu/sigma and mu_s/sigma_s of {len(images)} images, {kept} as arr_0"
  print(f"wrote {_OUT.value}: {what}")


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
