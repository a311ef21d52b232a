"""FID, Inception Score and precision/recall as ADM's evaluator computes them.

Statistics and FID in float64 on the host; Inception and k-NN distances in float32 on device.
"""

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.special
from absl import logging
from jax import lax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from PIL import Image

from pra_jax.metrics import inception


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (float64) of features [n, d]."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"features must be [n >= 2, d], got shape {f.shape}")
  return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), all in float64."""
  mu1, mu2 = np.atleast_1d(np.float64(mu1)), np.atleast_1d(np.float64(mu2))
  sigma1, sigma2 = np.atleast_2d(np.float64(sigma1)), np.atleast_2d(np.float64(sigma2))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"statistics disagree in shape: mu {mu1.shape} vs {mu2.shape}, "
                     f"sigma {sigma1.shape} vs {sigma2.shape}")
  diff = mu1 - mu2
  covmean, _ = scipy.linalg.sqrtm(sigma1.dot(sigma2), disp=False)
  if not np.isfinite(covmean).all():
    # A singular product (few samples, dead features): regularise the diagonal.
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(features, mu_ref, sigma_ref) -> float:
  """FID of features [n, d] against reference statistics; exact and cheap when n <= d.

  With n <= d the sample covariance is A^T A for the centred, scaled features A [n, d], and
  the non-zero eigenvalues of S1 S2 = A^T A S2 are those of the symmetric n x n matrix
  A S2 A^T: Tr sqrt(S1 S2) needs one small eigendecomposition instead of a d x d sqrtm
  (minutes for d = 2048 on a few CPU cores). With n > d it is frechet_distance itself.
  """
  f = np.asarray(features, np.float64)
  mu2, sigma2 = np.float64(mu_ref), np.float64(sigma_ref)
  if f.ndim != 2 or f.shape[0] < 2 or mu2.shape != f.shape[1:] or sigma2.shape != 2 * f.shape[1:]:
    raise ValueError(f"features {f.shape} do not match reference mu {mu2.shape}, "
                     f"sigma {sigma2.shape}")
  if f.shape[0] > f.shape[1]:
    return frechet_distance(*feature_statistics(f), mu2, sigma2)
  mu1 = f.mean(axis=0)
  a = (f - mu1) / np.sqrt(f.shape[0] - 1)
  eig = np.linalg.eigvalsh(a @ sigma2 @ a.T)
  tr_covmean = np.sqrt(np.clip(eig, 0.0, None)).sum()
  diff = mu1 - mu2
  return float(diff.dot(diff) + np.sum(a * a) + np.trace(sigma2) - 2.0 * tr_covmean)


def inception_score(logits, splits: int = 10) -> float:
  """exp E_x KL(p(y|x) || p(y)), averaged over `splits` consecutive parts (float64).

  ADM scores 50k samples in parts of 5000, i.e. the default 10 splits, on logits without
  the fc bias (InceptionOutput.logits_unbiased).
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or not 1 <= splits <= logits.shape[0]:
    raise ValueError(f"need logits [n >= splits, K] and splits >= 1, got shape "
                     f"{logits.shape}, splits={splits}")
  log_p = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
  scores = []
  for part in np.array_split(log_p, splits):
    log_marginal = scipy.special.logsumexp(part, axis=0) - np.log(part.shape[0])
    kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores))


# ----------------------------------------------------------------------------- precision/recall
# Improved precision and recall (Kynkaanniemi et al. 2019) as ADM computes it: each set's
# manifold is the union of balls reaching each point's k-th nearest neighbour in that set;
# precision = share of samples inside the reference manifold, recall = the converse. ADM
# tries float16 distances first; these are float32 throughout.

def _sq_distances(a_AD, b_BD):
  a2 = jnp.sum(a_AD * a_AD, axis=1)[:, None]
  b2 = jnp.sum(b_BD * b_BD, axis=1)[None, :]
  return jnp.maximum(a2 - 2.0 * jnp.dot(a_AD, b_BD.T, precision=lax.Precision.HIGHEST) + b2, 0.0)


@functools.partial(jax.jit, static_argnums=4)
def _knn_block(best_AK, a_AD, b_BD, b_valid_B, k: int):
  """Folds one column block into the running k + 1 smallest distances (self included)."""
  d = jnp.where(b_valid_B[None, :], _sq_distances(a_AD, b_BD), jnp.inf)
  return -lax.top_k(-jnp.concatenate([best_AK, d], axis=1), k + 1)[0]


@jax.jit
def _coverage_block(a_in_A, b_in_B, a_AD, radii_A, b_BD, radii_B):
  d = _sq_distances(a_AD, b_BD)
  a_in_A = a_in_A | jnp.any(d <= radii_B[None, :], axis=1)
  b_in_B = b_in_B | jnp.any(d <= radii_A[:, None], axis=0)
  return a_in_A, b_in_B


def _blocks(x, block: int):
  """Pads [n, d] to whole blocks; returns (blocks [m, block, d], valid [m, block])."""
  n = x.shape[0]
  block = min(block, n)
  m = -(-n // block)
  padded = np.zeros((m * block, x.shape[1]), np.float32)
  padded[:n] = x
  valid = np.arange(m * block) < n
  return padded.reshape(m, block, -1), valid.reshape(m, block)


def manifold_radii(features, k: int = 3, block: int = 10000) -> np.ndarray:
  """Squared distance from each point [n, d] to its k-th nearest other point."""
  if features.shape[0] <= k:
    raise ValueError(f"need more than k={k} feature vectors, got {features.shape[0]}")
  xs, valid = _blocks(features, block)
  radii = []
  for rows in xs:
    best = jnp.full((rows.shape[0], k + 1), jnp.inf, jnp.float32)
    for cols, cols_valid in zip(xs, valid):
      best = _knn_block(best, rows, cols, cols_valid, k)
    radii.append(np.asarray(best[:, k]))  # Index 0 is the point itself.
  return np.concatenate(radii)[: features.shape[0]]


def precision_recall(ref_features, sample_features, k: int = 3,
                     block: int = 10000) -> tuple[float, float]:
  """(precision, recall) of samples against reference features, both [n, d]."""
  ref = np.asarray(ref_features, np.float32)
  smp = np.asarray(sample_features, np.float32)
  if ref.ndim != 2 or smp.ndim != 2 or ref.shape[1] != smp.shape[1]:
    raise ValueError(f"features must be [n, d] with equal d, got {ref.shape}, {smp.shape}")
  ref_blocks, ref_valid = _blocks(ref, block)
  smp_blocks, smp_valid = _blocks(smp, block)
  # Padding gets radius -1: its balls hold nothing, and its own status is dropped below.
  ref_radii = np.where(ref_valid.ravel(), np.pad(manifold_radii(ref, k, block),
                                                 (0, ref_valid.size - ref.shape[0])), -1.0)
  smp_radii = np.where(smp_valid.ravel(), np.pad(manifold_radii(smp, k, block),
                                                 (0, smp_valid.size - smp.shape[0])), -1.0)
  ref_radii = ref_radii.reshape(ref_valid.shape).astype(np.float32)
  smp_radii = smp_radii.reshape(smp_valid.shape).astype(np.float32)
  ref_in = [jnp.zeros(ref_blocks.shape[1], bool) for _ in ref_blocks]
  smp_in = [jnp.zeros(smp_blocks.shape[1], bool) for _ in smp_blocks]
  for i, (a, ra) in enumerate(zip(ref_blocks, ref_radii)):
    for j, (b, rb) in enumerate(zip(smp_blocks, smp_radii)):
      ref_in[i], smp_in[j] = _coverage_block(ref_in[i], smp_in[j], a, ra, b, rb)
  recall = np.concatenate([np.asarray(x) for x in ref_in])[ref_valid.ravel()].mean()
  precision = np.concatenate([np.asarray(x) for x in smp_in])[smp_valid.ravel()].mean()
  return float(precision), float(recall)


# ----------------------------------------------------------------------------- running Inception

def check_images(images, source: str) -> np.ndarray:
  """images must be uint8 [N, H, W, 1 or 3]; the error names `source` (a file or folder)."""
  if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
    raise ValueError(f"{source}: images must be a uint8 array, got "
                     f"{getattr(images, 'dtype', type(images))}")
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[0] == 0:
    raise ValueError(f"{source}: images must be uint8 NHWC [N > 0, H, W, 1 or 3], got shape "
                     f"{images.shape}")
  return images


def data_mesh() -> jax.sharding.Mesh | None:
  """A 1-D 'data' mesh over the local devices, or None on a single device."""
  devices = jax.local_devices()
  if len(devices) == 1:
    return None
  return jax.make_mesh((len(devices),), ("data",), (AxisType.Auto,), devices=devices)


def map_batches(fn, images, batch_size: int, mesh: jax.sharding.Mesh | None = None,
                what: str = "images", log_every_s: float = 60.0):
  """fn over images [N, ...] in fixed-size batches; returns fn's outputs for all N images.

  fn maps a [batch, ...] array to a tuple of [batch, ...] arrays. The last batch is padded
  (with its own last image) and the padding dropped, so every image counts once and one
  compile serves all batches. With a mesh each batch is sharded over its 'data' axis
  (batch_size rounded up to a multiple of its size). Results are fetched one batch late so
  the host copy overlaps the next batch's compute.
  """
  sharding = None
  if mesh is not None:
    sharding = NamedSharding(mesh, P("data"))
    batch_size = -(-batch_size // mesh.shape["data"]) * mesh.shape["data"]
  n = images.shape[0]
  outputs, pending = [], None
  start_time = last_log = time.time()
  for start in range(0, n, batch_size):
    batch = np.asarray(images[start:start + batch_size])
    count = batch.shape[0]
    if count < batch_size:
      batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - count, axis=0)])
    result = fn(jax.device_put(batch, sharding) if sharding is not None else jnp.asarray(batch))
    if pending is not None:
      outputs.append(tuple(np.asarray(r)[:pending[1]] for r in pending[0]))
    pending = (result, count)
    if time.time() - last_log > log_every_s:
      last_log = time.time()
      logging.info("%s: %d/%d, %.1f/s", what, start + count, n,
                   (start + count) / (last_log - start_time))
  outputs.append(tuple(np.asarray(r)[:pending[1]] for r in pending[0]))
  if time.time() - start_time > log_every_s:
    logging.info("%s: all %d done in %.0fs", what, n, time.time() - start_time)
  return tuple(np.concatenate(parts) for parts in zip(*outputs))


def run_inception(images, model: inception.InceptionV3,
                  batch_size: int = 200) -> tuple[np.ndarray, np.ndarray]:
  """uint8 NHWC images [N, ...] -> (pool_3 features [N, 2048], unbiased logits [N, 1008])."""
  images = check_images(images, "run_inception")
  mesh = data_mesh()
  extract = inception.make_extractor(model, mesh)

  def pool_and_logits(batch):
    out = extract(batch)
    return out.pool, out.logits_unbiased

  return map_batches(pool_and_logits, images, batch_size, mesh, what="inception images")


# ----------------------------------------------------------------------------- reference batches

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def load_images(path: str) -> np.ndarray:
  """uint8 NHWC images from a .npz (`arr_0`) or a folder of equally sized image files."""
  if os.path.isdir(path):
    files = sorted(f for f in os.listdir(path) if f.lower().endswith(_IMAGE_SUFFIXES))
    if not files:
      raise ValueError(f"image folder {path!r} holds no {'/'.join(_IMAGE_SUFFIXES)} files")
    images = [np.asarray(Image.open(os.path.join(path, f)).convert("RGB")) for f in files]
    sizes = {im.shape for im in images}
    if len(sizes) > 1:
      raise ValueError(f"image folder {path!r} mixes image sizes {sorted(sizes)[:4]}; crop or "
                       "resize them to one size first")
    return check_images(np.stack(images), f"image folder {path!r}")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"images {path!r}: no such .npz file or folder")
  with np.load(path, allow_pickle=False) as npz:
    if "arr_0" not in npz.files:
      raise ValueError(f"{path!r} has no 'arr_0' images (keys: {npz.files})")
    return check_images(npz["arr_0"], f"images file {path!r}")


def load_reference(path: str) -> dict[str, np.ndarray]:
  """An ADM reference batch: {'mu', 'sigma'} and, if present, 'images' (its arr_0)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"reference batch {path!r} not found")
  with np.load(path, allow_pickle=False) as npz:
    missing = [k for k in ("mu", "sigma") if k not in npz.files]
    if missing:
      raise ValueError(
          f"reference batch {path!r} lacks {missing} (keys: {npz.files}); use an ADM "
          "reference batch or build one with pra_jax.metrics.fid.compute_reference")
    ref = {"mu": npz["mu"].astype(np.float64), "sigma": npz["sigma"].astype(np.float64)}
    if "arr_0" in npz.files:
      ref["images"] = check_images(npz["arr_0"], f"reference batch {path!r}")
  d = ref["mu"].shape
  if len(d) != 1 or ref["sigma"].shape != 2 * d:
    raise ValueError(f"reference batch {path!r}: mu {ref['mu'].shape} and sigma "
                     f"{ref['sigma'].shape} are not [d] and [d, d]")
  return ref


def compute_reference(images, model: inception.InceptionV3, out_path: str,
                      batch_size: int = 200, num_pr_images: int = 10000,
                      seed: int = 0) -> dict[str, np.ndarray]:
  """Writes an ADM-style reference batch from real images (array, .npz or folder path).

  mu and sigma come from all images; arr_0 keeps a seeded random subset of num_pr_images
  for precision/recall, as ADM's reference batches hold 10k images.
  """
  if isinstance(images, str):
    images = load_images(images)
  images = check_images(images, "compute_reference")
  pool, _ = run_inception(images, model, batch_size)
  mu, sigma = feature_statistics(pool)
  keep = np.random.default_rng(seed).permutation(len(images))[:num_pr_images]
  ref = {"mu": mu, "sigma": sigma, "arr_0": images[np.sort(keep)]}
  with open(out_path, "wb") as f:
    np.savez(f, **ref)
  logging.info("reference batch %s: %d images, %d kept for precision/recall", out_path,
               len(images), len(keep))
  return ref
