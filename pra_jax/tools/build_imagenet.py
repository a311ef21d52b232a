"""Builds ImageNet (TFDS imagenet2012) as array_record records from the two downloaded tars, once.

  python -m pra_jax.tools.build_imagenet --manual_dir=/data/imagenet_tars [--data_dir=DIR]

--manual_dir holds ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar as downloaded from
image-net.org (not extracted). The records go to --data_dir, else $TFDS_DATA_DIR, else
~/tensorflow_datasets: the same order data.source=tfds reads in. A dataset already built there is
kept. Training reads the records with --config.data.tfds_data_dir=DIR (or TFDS_DATA_DIR=DIR);
pra_jax/tfds_records.py says why this is not `tfds build`.
"""

from absl import app, flags

from pra_jax import cli, tfds_records

_MANUAL_DIR = flags.DEFINE_string("manual_dir", None,
                                  "Folder holding ILSVRC2012_img_train.tar and "
                                  "ILSVRC2012_img_val.tar.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Where the records go (default: "
                                "$TFDS_DATA_DIR, else ~/tensorflow_datasets).")


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _MANUAL_DIR.value:
    cli.usage_error("--manual_dir is required: the folder holding the ImageNet tars")
  with cli.user_input():
    tfds_records.check_manual_dir(_MANUAL_DIR.value)  # Before TensorFlow's import.
  built = tfds_records.build_imagenet(_MANUAL_DIR.value, _DATA_DIR.value)
  counts = ", ".join(f"{name} {n}" for name, n in sorted(built["splits"].items()))
  print(f"imagenet2012 in {built['dir']} ({counts} examples; {built['seconds']:.1f} s). "
        f"Train with TFDS_DATA_DIR={built['data_dir']} or "
        f"--config.data.tfds_data_dir={built['data_dir']}", flush=True)


if __name__ == "__main__":
  app.run(cli.one_line_errors(main))
