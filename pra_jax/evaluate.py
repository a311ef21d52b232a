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

from pra_jax import quiet
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


def main(argv):
  quiet.quiet_library_logs()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not _SAMPLES.value:
    raise app.UsageError("--samples is required")
  if _IS_SPLIT_SIZE.value < 1:
    raise app.UsageError(f"--is_split_size must be >= 1, got {_IS_SPLIT_SIZE.value}")
  images, labels = scoring.load_samples(_SAMPLES.value)
  if _METRICS.value == "inception":
    if not _REF.value or not _INCEPTION.value:
      raise app.UsageError("--metrics=inception needs --ref and --inception")
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
  app.run(main)
