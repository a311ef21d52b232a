"""Scores a sample batch: FID / sFID / IS / precision / recall against an ADM reference batch,
by ADM's evaluator's rules, or the digits demo's own metrics. Prints the metrics and writes
them beside the samples.

  python -m pra_jax.evaluate --samples=samples.npz --ref=VIRTUAL_imagenet256_labeled.npz \
      --inception=inception_fid.npz   # -> samples.metrics.json
  python -m pra_jax.evaluate --samples=samples.npz --metrics=digits
"""

import functools
import hashlib
import importlib
import json
import os
import sys

import numpy as np
from absl import app, flags, logging

from pra_jax.metrics import fid, inception


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


def _stamp(path: str) -> tuple:
  """Cache key of a file: a rewritten file is reloaded."""
  path = os.path.abspath(path)
  st = os.stat(path) if os.path.isfile(path) else None
  return (path, st and st.st_mtime_ns, st and st.st_size)


@functools.lru_cache(maxsize=1)
def _reference_and_model(ref_stamp: tuple, inception_stamp: tuple, batch_size: int):
  """(completed reference, model, weights sha256), kept across trainer evals."""
  ref = fid.load_reference(ref_stamp[0])  # A bad reference fails before the weights load.
  model = inception.load_inception(inception_stamp[0])
  ref = fid.complete_reference(ref, model, batch_size)
  return ref, model, file_sha256(inception_stamp[0])


def evaluate_inception(samples, labels, ref_path: str, inception_path: str,
                       batch_size: int = 200, is_split_size: int = fid.IS_SPLIT_SIZE,
                       pr_distances: str = "float16_adm") -> dict:
  """FID, sFID, IS and precision/recall (k=3) of uint8 NHWC samples, by ADM's evaluator's rules.

  labels are accepted for a uniform call site and unused: these metrics are unconditional.
  sFID needs mu_s/sigma_s or arr_0 in the reference, precision and recall its arr_0; what
  cannot be computed is left out with a warning. The weights and the reference's features
  are reused by later calls with the same files.
  """
  del labels
  fid.check_pr_distances(pr_distances)
  samples = fid.check_images(samples, "samples")
  ref, model, sha256 = _reference_and_model(_stamp(ref_path), _stamp(inception_path), batch_size)
  pool, spatial, logits = fid.run_inception(samples, model, batch_size)
  metrics = {
      "fid": fid.fid_from_features(pool, ref["mu"], ref["sigma"]),
      "inception_score": fid.inception_score(logits, is_split_size),
      "num_images": int(samples.shape[0]),
      "inception_sha256": sha256,
  }
  if "mu_s" in ref:
    metrics["sfid"] = fid.fid_from_features(spatial, ref["mu_s"], ref["sigma_s"])
  else:
    logging.warning("reference batch %s has neither mu_s/sigma_s nor arr_0 images: no sFID",
                    ref_path)
  if "pool" in ref:
    metrics["precision"], metrics["recall"] = fid.precision_recall(
        ref["pool"], pool, k=3, distances=pr_distances)
    metrics["pr_distances"] = pr_distances
  else:
    logging.warning("reference batch %s has no arr_0 images: no precision/recall", ref_path)
  return metrics


def judge_cache(samples_path: str) -> str:
  """Where the digits judge is cached for these samples: the `eval_cache` the trainer filled
  (samples written into a run's workdir, or a folder below it), else a new one beside them."""
  folder = os.path.dirname(os.path.abspath(samples_path))
  for candidate in (folder, os.path.dirname(folder)):
    if os.path.isdir(os.path.join(candidate, "eval_cache")):
      return os.path.join(candidate, "eval_cache")
  return os.path.join(folder, "eval_cache")


def summary_line(metrics: dict) -> str:
  """The headline numbers, each distance with the sample count it was measured on: FD and FID
  fall as the count grows, so they compare only at equal counts."""
  n = metrics.get("digits_num_images", metrics.get("num_images"))
  n = f"{int(n)} samples" if n is not None else "samples"
  if "digits_fd" in metrics:
    return (f"digits: {100 * metrics['digits_accuracy']:.1f}% recognised as the requested class, "
            f"FD {metrics['digits_fd']:.2f} on {n} (judge: "
            f"{100 * metrics['digits_classifier_eval_accuracy']:.1f}% on held-out scans)")
  parts = [f"{k} {metrics[k]:.3f}" for k in ("fid", "sfid", "inception_score", "precision",
                                             "recall") if k in metrics]
  return f"{', '.join(parts)} on {n}"


def metrics_path(samples_path: str) -> str:
  """samples.npz -> samples.metrics.json, beside it."""
  root, ext = os.path.splitext(samples_path)
  return (root if ext == ".npz" else samples_path) + ".metrics.json"


def _define_flags():
  """CLI flags, defined only when this module runs as the program (the trainer imports it)."""
  return {
      "samples": flags.DEFINE_string("samples", None,
                                     ".npz of samples: arr_0 uint8 NHWC, arr_1 labels (optional)."),
      "metrics": flags.DEFINE_enum("metrics", "inception", ["inception", "digits"],
                                   "inception: FID/IS/precision/recall against --ref; digits: "
                                   "the demo's judge (pra_jax.metrics.digits)."),
      "ref": flags.DEFINE_string("ref", None,
                                 "ADM reference batch .npz: mu, sigma, mu_s, sigma_s and arr_0 "
                                 "(precision/recall); stats it lacks come from its arr_0."),
      "inception": flags.DEFINE_string("inception", None,
                                       f"Inception weights .npz. {inception.WEIGHTS_HOWTO}"),
      "batch_size": flags.DEFINE_integer("batch_size", 200,
                                         "Images per Inception batch, over all local devices."),
      "is_split_size": flags.DEFINE_integer(
          "is_split_size", fid.IS_SPLIT_SIZE,
          "Inception Score parts of this many consecutive images, the last one what is left "
          "(ADM's rule: 5000)."),
      "pr_distances": flags.DEFINE_enum(
          "pr_distances", "float16_adm", list(fid.PR_DISTANCES),
          "Precision/recall distances: float16_adm = ADM's shipped evaluator (float16 first, "
          "float32 for a block that overflows; reads 0.4-2 points higher), float32 = exact."),
      "cache_dir": flags.DEFINE_string("cache_dir", None,
                                       "Digits judge cache; default: the samples' folder."),
  }


_FLAGS = {}


def main(argv):
  from pra_jax import quiet
  quiet.quiet_library_logs()
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = {k: v.value for k, v in _FLAGS.items()}
  if not f["samples"]:
    raise app.UsageError("--samples is required")
  if f["is_split_size"] < 1:
    raise app.UsageError(f"--is_split_size must be >= 1, got {f['is_split_size']}")
  images, labels = load_samples(f["samples"])
  if f["metrics"] == "inception":
    if not f["ref"] or not f["inception"]:
      raise app.UsageError("--metrics=inception needs --ref and --inception")
    metrics = evaluate_inception(images, labels, f["ref"], f["inception"], f["batch_size"],
                                 f["is_split_size"], f["pr_distances"])
  else:
    digits = importlib.import_module("pra_jax.metrics.digits")  # Only this branch needs it.
    metrics = digits.evaluate_digits(images, labels, f["cache_dir"] or judge_cache(f["samples"]))
  metrics = {k: v.item() if hasattr(v, "item") else v for k, v in metrics.items()}
  out = metrics_path(f["samples"])
  with open(out, "w") as fp:
    json.dump(metrics, fp, indent=2, sort_keys=True)
  print(json.dumps(metrics, sort_keys=True))
  print(summary_line(metrics), file=sys.stderr)   # stdout stays one line of JSON.
  logging.info("wrote %s", out)


if __name__ == "__main__":
  _FLAGS.update(_define_flags())
  app.run(main)
