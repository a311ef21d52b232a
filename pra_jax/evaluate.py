"""Scores a sample batch: FID / IS / precision / recall against an ADM reference batch, or the
digits demo's own metrics. Prints the metrics and writes them beside the samples.

  python -m pra_jax.evaluate --samples=samples.npz --ref=VIRTUAL_imagenet256_labeled.npz \
      --inception=inception_fid.npz   # -> samples.metrics.json
  python -m pra_jax.evaluate --samples=samples.npz --metrics=digits
"""

import hashlib
import importlib
import json
import os

import numpy as np
from absl import app, flags, logging

from pra_jax.metrics import fid, inception

FLAGS = flags.FLAGS
flags.DEFINE_string("samples", None, ".npz of samples: arr_0 uint8 NHWC, arr_1 labels (optional).")
flags.DEFINE_enum("metrics", "inception", ["inception", "digits"],
                  "inception: FID/IS/precision/recall vs --ref; digits: the demo's probe metrics.")
flags.DEFINE_string("ref", None, "ADM reference batch .npz (mu, sigma; arr_0 for prec/recall).")
flags.DEFINE_string("inception", None, f"Inception weights .npz. {inception.WEIGHTS_HOWTO}")
flags.DEFINE_integer("batch_size", 200, "Images per Inception batch (over all local devices).")
flags.DEFINE_integer("is_splits", 10, "Inception Score splits (ADM: 50k samples in 10).")
flags.DEFINE_string("cache_dir", None, "Cache for the digits metrics; default: the samples' folder.")


def load_samples(path: str) -> tuple[np.ndarray, np.ndarray | None]:
  """(images uint8 [N, H, W, C], labels [N] or None) from a samples .npz."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"samples file {path!r} not found")
  with np.load(path, allow_pickle=False) as npz:
    if "arr_0" not in npz.files:
      raise ValueError(f"samples file {path!r} has no 'arr_0' images (keys: {npz.files})")
    images = fid.check_images(npz["arr_0"], f"samples file {path!r}")
    labels = npz["arr_1"] if "arr_1" in npz.files else None
  if labels is not None and labels.shape != images.shape[:1]:
    raise ValueError(f"samples file {path!r}: labels arr_1 {labels.shape} do not match "
                     f"{images.shape[0]} images")
  return images, labels


def file_sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def evaluate_inception(samples, labels, ref_path: str, inception_path: str,
                       batch_size: int = 200, is_splits: int = 10) -> dict:
  """FID, IS, precision and recall (k=3) of uint8 NHWC samples, as ADM's evaluator scores them.

  labels are accepted for a uniform call site and unused: these metrics are unconditional.
  Precision and recall are None when the reference batch has no arr_0 images.
  """
  del labels
  samples = fid.check_images(samples, "samples")
  ref = fid.load_reference(ref_path)
  model = inception.load_inception(inception_path)
  pool, logits = fid.run_inception(samples, model, batch_size)
  metrics = {
      "fid": fid.fid_from_features(pool, ref["mu"], ref["sigma"]),
      "inception_score": fid.inception_score(logits, min(is_splits, len(samples))),
      "precision": None,
      "recall": None,
      "num_images": int(samples.shape[0]),
      "inception_sha256": file_sha256(inception_path),
  }
  if "images" in ref:
    ref_pool, _ = fid.run_inception(ref["images"], model, batch_size)
    metrics["precision"], metrics["recall"] = fid.precision_recall(ref_pool, pool, k=3)
  else:
    logging.warning("reference batch %s has no arr_0 images: no precision/recall", ref_path)
  return metrics


def metrics_path(samples_path: str) -> str:
  """samples.npz -> samples.metrics.json, beside it."""
  root, ext = os.path.splitext(samples_path)
  return (root if ext == ".npz" else samples_path) + ".metrics.json"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.samples:
    raise app.UsageError("--samples is required")
  images, labels = load_samples(FLAGS.samples)
  if FLAGS.metrics == "inception":
    if not FLAGS.ref or not FLAGS.inception:
      raise app.UsageError("--metrics=inception needs --ref and --inception")
    metrics = evaluate_inception(images, labels, FLAGS.ref, FLAGS.inception, FLAGS.batch_size,
                                 FLAGS.is_splits)
  else:
    digits = importlib.import_module("pra_jax.metrics.digits")  # Only this branch needs it.
    cache_dir = FLAGS.cache_dir or os.path.dirname(os.path.abspath(FLAGS.samples))
    metrics = digits.evaluate_digits(images, labels, cache_dir)
  metrics = {k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()}
  out = metrics_path(FLAGS.samples)
  with open(out, "w") as f:
    json.dump(metrics, f, indent=2, sort_keys=True)
  print(json.dumps(metrics, sort_keys=True))
  logging.info("wrote %s", out)


if __name__ == "__main__":
  app.run(main)
