"""Writes an ADM-format reference batch from real images, for pra_jax.evaluate --ref.

  python -m pra_jax.tools.reference --images=val_256/ --inception=inception_fid.npz \
      --out=ref_val256.npz [--num_pr_images=10000]

--images is a folder of equally sized image files or an .npz with uint8 NHWC arr_0 (center-crop
and resize them to the sample resolution first, as ADM's reference batches are). The file holds
mu, sigma (pool_3) and mu_s, sigma_s (sFID's spatial features) of all the images, and arr_0: a
seeded random subset of --num_pr_images of them for precision/recall (0 = no arr_0).
"""

from absl import app, flags

from pra_jax.metrics import fid, inception


def _define_flags():
  """CLI flags, defined only when this module runs as the program."""
  return {
      "images": flags.DEFINE_string("images", None,
                                    "Folder of image files, or .npz with uint8 NHWC arr_0."),
      "inception": flags.DEFINE_string("inception", None,
                                       f"Inception weights .npz. {inception.WEIGHTS_HOWTO}"),
      "out": flags.DEFINE_string("out", None, "Where to write the reference .npz."),
      "num_pr_images": flags.DEFINE_integer(
          "num_pr_images", 10000,
          "Images kept as arr_0 for precision/recall (ADM: 10k; 0 = none)."),
      "batch_size": flags.DEFINE_integer("batch_size", 200,
                                         "Images per Inception batch, over all local devices."),
      "seed": flags.DEFINE_integer("seed", 0, "Seed of the arr_0 subset."),
  }


_FLAGS = {}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = {k: v.value for k, v in _FLAGS.items()}
  for name in ("images", "inception", "out"):
    if not f[name]:
      raise app.UsageError(f"--{name} is required")
  if f["num_pr_images"] < 0 or f["batch_size"] < 1:
    raise app.UsageError(f"--num_pr_images must be >= 0 and --batch_size >= 1, got "
                         f"{f['num_pr_images']}, {f['batch_size']}")
  images = fid.load_images(f["images"])  # Read first: a bad folder fails before any compile.
  model = inception.load_inception(f["inception"])
  ref = fid.compute_reference(images, model, f["out"], f["batch_size"], f["num_pr_images"],
                              f["seed"])
  kept = len(ref["arr_0"]) if "arr_0" in ref else 0
  print(f"wrote {f['out']}: mu/sigma and mu_s/sigma_s of {len(images)} images, {kept} as arr_0")


if __name__ == "__main__":
  _FLAGS.update(_define_flags())
  app.run(main)
