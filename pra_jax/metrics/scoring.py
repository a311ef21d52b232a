"""Scoring generated images: the Inception metrics by ADM's evaluator's rules (reference and
weights cached across calls), where the demo's judge is cached, the one-line summary, and where
a samples file's metrics are written. Used by `python -m pra_jax.evaluate` and the trainer's
periodic evaluation.
"""

import functools
import hashlib
import os

import numpy as np
from absl import logging

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
