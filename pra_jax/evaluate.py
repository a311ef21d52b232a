"""Scores a sample batch: FID / sFID / IS / precision / recall against an ADM reference batch,
by ADM's evaluator's rules, or the digits demo's own metrics. Prints the metrics and writes
them beside the samples.

  python -m pra_jax.evaluate --samples=samples.npz --ref=VIRTUAL_imagenet256_labeled.npz \
      --inception=inception_fid.npz   # -> samples.metrics.json
  python -m pra_jax.evaluate --samples=samples.npz --metrics=digits
"""

import importlib
import json
import sys

from absl import app, flags, logging

from pra_jax import cli, quiet
from pra_jax.metrics import fid, inception, scoring

_SAMPLES = flags.DEFINE_string("samples", None,
                               ".npz of samples: arr_0 uint8 NHWC, arr_1 labels (optional).")
_METRICS = flags.DEFINE_enum("metrics", "inception", ["inception", "digits"],
                             "inception: FID/IS/precision/recall against --ref; digits: the "
                             "demo's judge (pra_jax.metrics.digits).")
_REF = flags.DEFINE_string("ref", None,
                           "ADM reference batch .npz: mu, sigma, mu_s, sigma_s and arr_0 "
                           "(precision/recall); stats it lacks come from its arr_0.")
_INCEPTION = flags.DEFINE_string("inception", None,
                                 f"Inception weights .npz. {inception.WEIGHTS_HOWTO}")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 200,
                                   "Images per Inception batch, over all local devices.")
_IS_SPLIT_SIZE = flags.DEFINE_integer(
    "is_split_size", fid.IS_SPLIT_SIZE,
    "Inception Score parts of this many consecutive images, the last one what is left "
    "(ADM's rule: 5000).")
_PR_DISTANCES = flags.DEFINE_enum(
    "pr_distances", "float16_adm", list(fid.PR_DISTANCES),
    "Precision/recall distances: float16_adm = ADM's shipped evaluator (float16 first, float32 "
    "for a block that overflows; reads 0.4-2 points higher), float32 = exact.")
_CACHE_DIR = flags.DEFINE_string("cache_dir", None,
                                 "Digits judge cache; default: the samples' folder.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "Digits: the samples' resolution, the run's data.image_size (default: "
    "the run's config.json beside --samples or one folder up). The judge reads only that size.")


def _check_args():
  """The flags, before any file is read."""
  if not _SAMPLES.value:
    cli.usage_error("--samples is required: the .npz that python -m pra_jax.sample "
                             "writes")
  if _METRICS.value == "inception" and (not _REF.value or not _INCEPTION.value):
    cli.usage_error("--metrics=inception needs --ref and --inception (or use "
                             "--metrics=digits for the digits demo)")
  for name, holder in (("is_split_size", _IS_SPLIT_SIZE), ("batch_size", _BATCH_SIZE),
                       ("image_size", _IMAGE_SIZE)):
    if holder.value is not None and holder.value < 1:
      cli.usage_error(f"--{name} must be a positive integer, got {holder.value}")


def _digits_shape() -> tuple[tuple[int, int, int], str]:
  """(H, W, C) the digits judge reads for these samples, and what says so."""
  if _IMAGE_SIZE.value is not None:
    return (_IMAGE_SIZE.value, _IMAGE_SIZE.value, 1), f"--image_size={_IMAGE_SIZE.value}"
  run = scoring.run_config_near(_SAMPLES.value)
  if run is None:
    raise ValueError(f"--samples={_SAMPLES.value!r} is not in a run's workdir (no config.json "
                     f"beside it or one folder up); expected --image_size=the run's "
                     f"data.image_size, the only size the digits judge reads")
  path, config = run
  size = config["data"]["image_size"]
  return (size, size, 1), f"the run's data.image_size / digits channels ({path})"


def _check_inputs():
  """Every file, from its headers, before anything loads or compiles: a judge is never
  retrained to fit samples of another resolution."""
  if _METRICS.value == "inception":
    shape = scoring.check_reference_file(_REF.value)
    against = f"the reference batch {_REF.value!r}"
    run = scoring.run_config_near(_SAMPLES.value)
    if shape is None and run is not None:   # Statistics only: the run's resolution instead.
      d = run[1]["data"]
      shape = (d["image_size"], d["image_size"], d["channels"])
      against = f"the run's data ({run[0]})"
    scoring.check_inception_file(_INCEPTION.value)
    scoring.check_samples_file(_SAMPLES.value, need_labels=False, shape_HWC=shape,
                               against=against)
  else:
    shape, against = _digits_shape()
    scoring.check_samples_file(_SAMPLES.value, need_labels=True, shape_HWC=shape,
                               against=against)


def main(argv):
  quiet.quiet_library_logs()
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  _check_args()
  with cli.user_input():
    _check_inputs()
    images, labels = scoring.load_samples(_SAMPLES.value)
    if _METRICS.value == "inception":
      metrics = scoring.evaluate_inception(images, labels, _REF.value, _INCEPTION.value,
                                           _BATCH_SIZE.value, _IS_SPLIT_SIZE.value,
                                           _PR_DISTANCES.value)
    else:
      digits = importlib.import_module("pra_jax.metrics.digits")  # Only this branch needs it.
      metrics = digits.evaluate_digits(images, labels,
                                       _CACHE_DIR.value or scoring.judge_cache(_SAMPLES.value))
  metrics = {k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()}
  out = scoring.metrics_path(_SAMPLES.value)
  with open(out, "w") as fp:
    json.dump(metrics, fp, indent=2, sort_keys=True)
  print(json.dumps(metrics, sort_keys=True))
  print(scoring.summary_line(metrics), file=sys.stderr)   # stdout stays one line of JSON.
  logging.info("wrote %s", out)


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
