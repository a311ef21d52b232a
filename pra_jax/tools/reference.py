"""Writes an ADM-format reference batch from real images, for pra_jax.evaluate --ref.

  python -m pra_jax.tools.reference --images=val_256/ --inception=inception_fid.npz \
      --out=ref_val256.npz [--num_pr_images=10000]

--images is a folder of equally sized image files or an .npz with uint8 NHWC arr_0 (center-crop
and resize them to the sample resolution first, as ADM's reference batches are). The file holds
mu, sigma (pool_3) and mu_s, sigma_s (sFID's spatial features) of all the images, and arr_0: a
seeded random subset of --num_pr_images of them for precision/recall (0 = no arr_0).
"""

import os

from absl import app, flags

from pra_jax import cli
from pra_jax.metrics import fid, inception, scoring


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
_REQUIRED = {"images": _IMAGES, "inception": _INCEPTION, "out": _OUT}


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  for name, holder in _REQUIRED.items():
    if not holder.value:
      cli.usage_error(f"--{name} is required")
  if _NUM_PR_IMAGES.value < 0 or _BATCH_SIZE.value < 1:
    cli.usage_error(f"--num_pr_images must be >= 0 and --batch_size >= 1, got "
                             f"{_NUM_PR_IMAGES.value}, {_BATCH_SIZE.value}")
  with cli.user_input():
    out_dir = os.path.dirname(os.path.abspath(_OUT.value))
    if not os.path.isdir(out_dir):
      raise FileNotFoundError(f"--out={_OUT.value}: folder {out_dir} does not exist")
    if not os.path.isdir(_IMAGES.value):
      scoring.check_samples_file(_IMAGES.value, need_labels=False)   # Headers: no zip errors.
    scoring.check_inception_file(_INCEPTION.value)
    images = fid.load_images(_IMAGES.value)  # Read first: a bad folder fails before a compile.
    model = inception.load_inception(_INCEPTION.value)
  ref = fid.compute_reference(images, model, _OUT.value, _BATCH_SIZE.value, _NUM_PR_IMAGES.value,
                              _SEED.value)
  kept = len(ref["arr_0"]) if "arr_0" in ref else 0
  print(f"wrote {_OUT.value}: mu/sigma and mu_s/sigma_s of {len(images)} images, {kept} as arr_0")


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
