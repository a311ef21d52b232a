"""Scoring generated images: the Inception metrics by ADM's evaluator's rules (reference and
weights cached across calls), where the demo's judge is cached, the one-line summary, and where
a samples file's metrics are written. Used by `python -m pra_jax.evaluate` and the trainer's
periodic evaluation.
"""

import functools
import hashlib
import os
import zipfile

import numpy as np
from absl import logging

from pra_jax.metrics import fid, inception


_SAMPLES_FORMAT = ("arr_0 uint8 images [N, H, W, 1 or 3] and arr_1 int labels [N] (what "
                   "python -m pra_jax.sample writes)")


def npz_headers(path: str, what: str) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
  """{array name: (shape, dtype)} of an .npz, from the headers alone (a reference batch's
  images are gigabytes): a missing, empty, truncated or non-.npz file is one ValueError naming
  `what`, not numpy's or zipfile's words."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what} not found; expected an existing .npz file")
  out = {}
  try:
    with zipfile.ZipFile(path) as zf:
      for name in zf.namelist():
        if name.endswith(".npy"):
          with zf.open(name) as f:
            major, _ = np.lib.format.read_magic(f)
            read = (np.lib.format.read_array_header_1_0 if major == 1
                    else np.lib.format.read_array_header_2_0)
            shape, _, dtype = read(f)
          out[name[:-len(".npy")]] = (tuple(shape), dtype)
  except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
    raise ValueError(f"{what} is not a readable .npz ({type(e).__name__}: {e}); expected a "
                     f"file written by numpy.savez") from None
  return out


def check_samples_file(path: str, *, need_labels: bool,
                       shape_HWC: tuple[int, int, int] | None = None, against: str = "") -> None:
  """The samples .npz, from its headers: arr_0 uint8 NHWC (of `shape_HWC` when given, which
  `against` names), and arr_1 int labels of the same length when labels are needed."""
  what = f"samples file {path!r}"
  headers = npz_headers(path, what)
  if "arr_0" not in headers:
    raise ValueError(f"{what} has no 'arr_0' images (arrays: {sorted(headers)}); expected "
                     f"{_SAMPLES_FORMAT}")
  shape, dtype = headers["arr_0"]
  if dtype != np.uint8:
    raise ValueError(f"{what}: arr_0 images must be uint8, got {dtype}; expected "
                     f"{_SAMPLES_FORMAT}")
  if len(shape) != 4 or shape[-1] not in (1, 3) or shape[0] == 0:
    raise ValueError(f"{what}: arr_0 images must be uint8 NHWC [N > 0, H, W, 1 or 3], got shape "
                     f"{shape}")
  if shape_HWC is not None and tuple(shape[1:]) != tuple(shape_HWC):
    raise ValueError(f"{what}: arr_0 images are {'x'.join(map(str, shape[1:]))} (H x W x C) but "
                     f"{against} is {'x'.join(map(str, shape_HWC))}; expected samples of that "
                     f"resolution and channels")
  if need_labels:
    if "arr_1" not in headers:
      raise ValueError(f"{what} has no arr_1 labels; expected {_SAMPLES_FORMAT}")
    label_shape, label_dtype = headers["arr_1"]
    if label_dtype.kind not in "iu" or label_shape != shape[:1]:
      raise ValueError(f"{what}: arr_1 is {label_dtype} {list(label_shape)}; expected int labels "
                       f"[{shape[0]}], one per image")


def check_reference_file(path: str) -> tuple[int, int, int] | None:
  """The reference batch from its headers: mu/sigma or arr_0 present, arr_0 uint8 NHWC. Returns
  its images' (H, W, C), or None when it holds statistics only."""
  what = f"reference batch --ref={path!r}"
  headers = npz_headers(path, what)
  if "mu" not in headers and "arr_0" not in headers:
    raise ValueError(f"{what} has neither mu/sigma nor arr_0 (arrays: {sorted(headers)}); "
                     f"expected an ADM reference batch (python -m pra_jax.tools.reference)")
  if "arr_0" not in headers:
    return None
  shape, dtype = headers["arr_0"]
  if dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3):
    raise ValueError(f"{what}: arr_0 is {dtype} {list(shape)}; expected uint8 [N, H, W, 1 or 3]")
  return tuple(shape[1:])


def check_inception_file(path: str) -> None:
  """The Inception weights from their headers: every array InceptionV3 needs, at its shape."""
  what = f"Inception weights --inception={path!r}"
  headers = npz_headers(path, what)
  expected = inception.weight_shapes()
  wrong = sorted(n for n, shape in expected.items() if headers.get(n, (None,))[0] != shape)
  if wrong:
    raise ValueError(f"{what}: {len(wrong)} of the {len(expected)} arrays are missing or "
                     f"misshapen (e.g. {wrong[0]!r}); {inception.WEIGHTS_HOWTO}")


def run_config_near(samples_path: str) -> tuple[str, dict] | None:
  """(path, config) of the run whose config.json sits beside the samples or one folder up
  (where sample.py's default --out and judge_cache look), or None."""
  from pra_jax import run_record  # Only the CLI's checks read it.
  folder = os.path.dirname(os.path.abspath(samples_path))
  for candidate in (folder, os.path.dirname(folder)):
    config = run_record.read_run_config(candidate)
    if config is not None:
      return os.path.join(candidate, run_record.CONFIG_FILE), config
  return None


def load_samples(path: str) -> tuple[np.ndarray, np.ndarray | None]:
  """(images uint8 [N, H, W, C], labels [N] or None) from a samples .npz."""
  check_samples_file(path, need_labels=False)
  with np.load(path, allow_pickle=False) as npz:
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


# One folder for the judges (digits, photos) of every run, when set. A judge is a deterministic
# function of what its file name holds (cache version, image size, seed), so runs can share one
# instead of each training its own (30 s on a 2-core CPU). Unset: each run keeps its own.
JUDGE_CACHE_ENV = "PRA_JAX_JUDGE_CACHE"


def judge_cache_dir(run_default: str) -> str:
  """Where a program keeps the judges it trains: $PRA_JAX_JUDGE_CACHE, else `run_default`."""
  return os.environ.get(JUDGE_CACHE_ENV) or run_default


def judge_cache(samples_path: str) -> str:
  """Where the digits judge is cached for these samples: $PRA_JAX_JUDGE_CACHE if set, else the
  `eval_cache` the trainer filled (samples written into a run's workdir, or a folder below it),
  else a new one beside them."""
  folder = os.path.dirname(os.path.abspath(samples_path))
  for candidate in (folder, os.path.dirname(folder)):
    if os.path.isdir(os.path.join(candidate, "eval_cache")):
      return judge_cache_dir(os.path.join(candidate, "eval_cache"))
  return judge_cache_dir(os.path.join(folder, "eval_cache"))


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
