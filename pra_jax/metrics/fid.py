"""FID, sFID, Inception Score and precision/recall as ADM's evaluator computes them.

Statistics and Frechet distances in float64 on the host; Inception and k-NN distances on device
(float32, or ADM's float16-first distances for precision/recall; see PR_DISTANCES).
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

from pra_jax import batching, files
from pra_jax.metrics import inception


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (float64) of features [n, d]."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"features must be [n >= 2, d], got shape {f.shape}")
  return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_factor(sigma):
  """F [d, d] with F F^T = sigma (symmetric PSD): eigenvectors times the square roots of the
  eigenvalues. Eigenvalues within eigh's rounding of 0 (below d * eps * max) are set to 0: the
  square root would turn noise of 1e-16 into 1e-8 per null direction. That is the statistics'
  own precision; the product's eigenvalues get no such cut-off (see trace_sqrt_product)."""
  w, v = np.linalg.eigh(sigma)
  tol = w.size * np.finfo(np.float64).eps * max(float(np.max(np.abs(w))), 1e-300)
  return v * np.sqrt(np.where(w > tol, w, 0.0))


def _nuclear_norm(m) -> float:
  return float(np.linalg.svd(m, compute_uv=False).sum())


def trace_sqrt_product(sigma1, sigma2) -> float:
  """Tr sqrt(S1 S2) of two covariances, well-posed when either is singular.

  With S1 = F1 F1^T and S2 = F2 F2^T, S1 S2 has the non-zero eigenvalues of
  (F2^T F1)^T (F2^T F1), so Tr sqrt(S1 S2) is the sum of the singular values of F2^T F1 (its
  nuclear norm). The SVD gets each singular value to float64 rounding of the largest, where
  the eigenvalues of the product carry that rounding under a square root: a noise cut-off on
  them zeroed real small ones (2e-5 to 7e-5 off at d = 512 in test_fid, n < d with dead
  features). scipy.linalg.sqrtm of the non-symmetric product warns "Matrix is singular" and
  loses accuracy there (a dead feature, or fewer samples than dims).
  """
  return _nuclear_norm(_psd_factor(sigma2).T @ _psd_factor(sigma1))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), all in float64.

  The value ADM's and pytorch-fid's sqrtm compute on full-rank statistics (1.5e-13 relative
  in test_fid's comparison), without their failure mode: on singular covariances SciPy's sqrtm
  (1.17) warns "Matrix is singular" and returns a less accurate root (ADM adds 1e-6 to the
  diagonals only when the root is not finite); here the trace is a nuclear norm (see
  trace_sqrt_product), with no offset and no warning.
  """
  mu1, mu2 = np.atleast_1d(np.float64(mu1)), np.atleast_1d(np.float64(mu2))
  sigma1, sigma2 = np.atleast_2d(np.float64(sigma1)), np.atleast_2d(np.float64(sigma2))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != 2 * mu1.shape:
    raise ValueError(f"statistics disagree in shape: mu {mu1.shape} vs {mu2.shape}, "
                     f"sigma {sigma1.shape} vs {sigma2.shape}")
  diff = mu1 - mu2
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * trace_sqrt_product(sigma1, sigma2))


def fid_from_features(features, mu_ref, sigma_ref) -> float:
  """FID of features [n, d] against reference statistics; exact and cheap when n <= d.

  With n <= d the sample covariance is A^T A for the centred, scaled features A [n, d], so
  A itself is S1's factor: Tr sqrt(S1 S2) is the nuclear norm of A F2 (n x d, F2 the
  reference's factor), exact in A. With n > d it is frechet_distance itself.
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
  tr_covmean = _nuclear_norm(a @ _psd_factor(sigma2))
  diff = mu1 - mu2
  return float(diff.dot(diff) + np.sum(a * a) + np.trace(sigma2) - 2.0 * tr_covmean)


# ADM's evaluator scores consecutive parts of this many images (50k samples: 10 parts).
IS_SPLIT_SIZE = 5000


def inception_score(logits, split_size: int = IS_SPLIT_SIZE) -> float:
  """exp E_x KL(p(y|x) || p(y)) per part of `split_size` consecutive images, averaged (float64).

  ADM's rule: parts start every split_size images and the last one holds what is left, so
  1k images are one part of 1k and 12k are 5k, 5k, 2k (a fixed 10 splits reads well below
  ADM there: 17% low at 10k and 66% low at 1k on test_fid's confident random logits). The
  logits are ADM's: pool_3 times the fc kernel, without the bias (logits_unbiased). log p
  comes from a float64 log-softmax, where ADM takes log of a float32 softmax; the two agree
  to float32 rounding.
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or logits.shape[0] < 1 or split_size < 1:
    raise ValueError(f"need logits [n >= 1, K] and split_size >= 1, got shape {logits.shape}, "
                     f"split_size={split_size}")
  log_p = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
  scores = []
  for start in range(0, log_p.shape[0], split_size):
    part = log_p[start:start + split_size]
    log_marginal = scipy.special.logsumexp(part, axis=0) - np.log(part.shape[0])
    kl = np.sum(np.exp(part) * (part - log_marginal), axis=1)
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores))


# ----------------------------------------------------------------------------- precision/recall
# Improved precision and recall (Kynkaanniemi et al. 2019) as ADM computes it: each set's
# manifold is the union of balls reaching each point's k-th nearest neighbour in that set;
# precision = share of samples inside the reference manifold, recall = the converse. Blocks of
# 10,000 x 10,000 distances, as ADM's.
#
# PR_DISTANCES says how each block's squared distances |a|^2 - 2 a.b + |b|^2 are computed:
#   'float16_adm' (default): ADM's shipped evaluator as TensorFlow runs it on CPU. Features
#     rounded to float16; each row's norm is TF's float16 reduce_sum of the float16 squares,
#     which accumulates in float16 in Eigen's order (tf_cpu_half_row_sums); a.b accumulated in
#     float32 and rounded to float16; every elementwise step rounded to float16; if any
#     distance of the block overflows float16 (inf), the whole block is redone in float32.
#     On 2048-d pool_3 features the rounding is coarse (spacing 0.25-0.5 at typical distances
#     of a few hundred) and ties count as inside, so precision and recall read 0.4-2 points
#     higher than exact arithmetic. Use it to compare with published numbers.
#   'float32': the same distances in float32 throughout (the formula without the rounding).
# The float16 rounding is lax.reduce_precision on float32 values: explicit HLO ops that no
# backend fuses away, so the result does not depend on whether the device has float16 units.
# float32 then float16 rounding equals one float16 rounding for +, -, * (24 >= 2 * 11 + 2 bits).
PR_DISTANCES = ("float16_adm", "float32")

# TF's CPU float16 reduce_sum over a row (Eigen's innermost-dimension reducer, no float32
# accumulator for half), measured bit for bit against tensorflow-cpu 2.21 in test_fid: packets
# of 8 halves; a run longer than 200 packets is split in two at a packet boundary (2048 dims:
# two runs of 1024) and the halves' sums added; a run is summed into 4 packet accumulators
# (packets 0-3, 4-7, ...), which are then added in order, leftover packets added to the first,
# the packet's 8 lanes summed in float32 and rounded once, and leftover scalars summed apart.
_TF_PACKET = 8
_TF_ACCUMULATORS = 4
_TF_LEAF_PACKETS = 200


def _tf_half_run_sums(x, first: int):
  """Sums of x [rows, n] (float16) as one Eigen reducer run per row starting at flat index
  `first` (only first mod 8 matters: the split point is aligned in the flat tensor)."""
  rows, n = x.shape
  if n > _TF_PACKET * _TF_LEAF_PACKETS:
    half = -(-n // 2)
    split = _TF_PACKET * (-(-(first + half) // _TF_PACKET))
    left = min(split - first, n)
    acc = _tf_half_run_sums(x[:, :left], first)
    if left < n:
      acc = acc + _tf_half_run_sums(x[:, left:], split)
    return acc
  step = _TF_ACCUMULATORS * _TF_PACKET
  unrolled, packed = (n // step) * step, (n // _TF_PACKET) * _TF_PACKET
  packet = np.zeros((rows, _TF_PACKET), np.float16)
  if unrolled:
    acc = np.zeros((rows, _TF_ACCUMULATORS, _TF_PACKET), np.float16)
    for j in range(0, unrolled, step):
      acc = acc + x[:, j:j + step].reshape(rows, _TF_ACCUMULATORS, _TF_PACKET)
    packet = acc[:, 0]
    for i in range(1, _TF_ACCUMULATORS):
      packet = packet + acc[:, i]
  for j in range(unrolled, packed, _TF_PACKET):
    packet = packet + x[:, j:j + _TF_PACKET]
  scalar = np.zeros(rows, np.float16)
  for j in range(packed, n):
    scalar = scalar + x[:, j]
  lanes = packet.astype(np.float32)
  lanes = lanes[:, :4] + lanes[:, 4:]
  lanes = (lanes[:, 0] + lanes[:, 2]) + (lanes[:, 1] + lanes[:, 3])
  return scalar + lanes.astype(np.float16)


def tf_cpu_half_row_sums(x_ND) -> np.ndarray:
  """TF's CPU tf.reduce_sum(x, 1) of a float16 array [N, D] fed as one tensor (float16 out)."""
  x = np.asarray(x_ND)
  if x.dtype != np.float16 or x.ndim != 2:
    raise ValueError(f"need a float16 array [N, D], got {x.dtype} {x.shape}")
  out = np.empty(x.shape[0], np.float16)
  with np.errstate(over="ignore", invalid="ignore"):  # inf norms send the block to float32.
    for phase in range(_TF_PACKET):  # Rows whose flat start index has the same residue.
      rows = np.flatnonzero((np.arange(x.shape[0]) * x.shape[1]) % _TF_PACKET == phase)
      if len(rows):
        out[rows] = _tf_half_run_sums(x[rows], phase)
  return out


def _adm_half_norms(x_ND) -> np.ndarray:
  """ADM's float16 squared norms of float32 features [N, D], as float32 (inf where they
  overflow): float16 features, float16 squares, TF's float16 row sum."""
  with np.errstate(over="ignore", invalid="ignore"):
    x16 = np.asarray(x_ND, np.float32).astype(np.float16)
    return tf_cpu_half_row_sums(x16 * x16).astype(np.float32)


def _round16(x):
  return lax.reduce_precision(x, exponent_bits=5, mantissa_bits=10)


def _sq_distances_f32(a_UD, b_VD):
  a2 = jnp.sum(a_UD * a_UD, axis=1)[:, None]
  b2 = jnp.sum(b_VD * b_VD, axis=1)[None, :]
  return jnp.maximum(a2 - 2.0 * jnp.dot(a_UD, b_VD.T, precision=lax.Precision.HIGHEST) + b2, 0.0)


def _sq_distances_f16(a_UD, a2_U, b_VD, b2_V):
  """a2_U, b2_V: the float16 norms of _adm_half_norms (float32 arrays holding float16 values)."""
  ab = _round16(jnp.dot(_round16(a_UD), _round16(b_VD).T, precision=lax.Precision.HIGHEST))
  d = _round16(_round16(a2_U[:, None] - _round16(2.0 * ab)) + b2_V[None, :])
  return jnp.maximum(d, 0.0)


def _sq_distances(a_UD, a2_U, b_VD, b2_V, distances: str):
  if distances == "float32":
    return _sq_distances_f32(a_UD, b_VD)
  d16 = _sq_distances_f16(a_UD, a2_U, b_VD, b2_V)
  # A cond, not a where: the float32 block is computed only for a block that overflows.
  return lax.cond(jnp.all(jnp.isfinite(d16)), lambda: d16,
                  lambda: _sq_distances_f32(a_UD, b_VD))


def check_pr_distances(distances: str) -> str:
  if distances not in PR_DISTANCES:
    raise ValueError(f"precision/recall distances must be one of {PR_DISTANCES}, "
                     f"got {distances!r}")
  return distances


@functools.partial(jax.jit, static_argnums=(6, 7))
def _knn_block(best, a_UD, a2_U, b_VD, b2_V, b_valid_V, k: int, distances: str):
  """Folds one column block into the running k + 1 smallest distances (self included): `best`
  is [U, k + 1], U and V the two row blocks (pra_jax's dimension table)."""
  d = jnp.where(b_valid_V[None, :], _sq_distances(a_UD, a2_U, b_VD, b2_V, distances), jnp.inf)
  block_best = -lax.top_k(-d, min(k + 1, d.shape[1]))[0]
  return -lax.top_k(-jnp.concatenate([best, block_best], axis=1), k + 1)[0]


@functools.partial(jax.jit, static_argnums=8)
def _coverage_block(a_in_U, b_in_V, a_UD, a2_U, radii_U, b_VD, b2_V, radii_V, distances: str):
  d = _sq_distances(a_UD, a2_U, b_VD, b2_V, distances)
  a_in_U = a_in_U | jnp.any(d <= radii_V[None, :], axis=1)
  b_in_V = b_in_V | jnp.any(d <= radii_U[:, None], axis=0)
  return a_in_U, b_in_V


def _blocks(x, block: int):
  """Pads [n, d] to whole blocks; returns (blocks [m, block, d], valid [m, block], norms
  [m, block]: ADM's float16 squared norms, each block's rows fed as one tensor as ADM feeds
  them)."""
  n = x.shape[0]
  block = min(block, n)
  m = -(-n // block)
  padded = np.zeros((m * block, x.shape[1]), np.float32)
  padded[:n] = x
  valid = np.arange(m * block) < n
  xs = padded.reshape(m, block, -1)
  norms = np.stack([_adm_half_norms(rows) for rows in xs])
  return xs, valid.reshape(m, block), norms


def manifold_radii(features, k: int = 3, block: int = 10000,
                   distances: str = "float16_adm") -> np.ndarray:
  """Squared distance from each point [n, d] to its k-th nearest other point."""
  check_pr_distances(distances)
  if features.shape[0] <= k:
    raise ValueError(f"need more than k={k} feature vectors, got {features.shape[0]}")
  xs, valid, norms = _blocks(features, block)
  radii = []
  for rows, rows2 in zip(xs, norms):
    best = jnp.full((rows.shape[0], k + 1), jnp.inf, jnp.float32)
    for cols, cols2, cols_valid in zip(xs, norms, valid):
      best = _knn_block(best, rows, rows2, cols, cols2, cols_valid, k, distances)
    radii.append(np.asarray(best[:, k]))  # Index 0 is the point itself.
  return np.concatenate(radii)[: features.shape[0]]


def precision_recall(ref_features, sample_features, k: int = 3, block: int = 10000,
                     distances: str = "float16_adm") -> tuple[float, float]:
  """(precision, recall) of samples against reference features, both [n, d]."""
  check_pr_distances(distances)
  ref = np.asarray(ref_features, np.float32)
  smp = np.asarray(sample_features, np.float32)
  if ref.ndim != 2 or smp.ndim != 2 or ref.shape[1] != smp.shape[1]:
    raise ValueError(f"features must be [n, d] with equal d, got {ref.shape}, {smp.shape}")
  ref_blocks, ref_valid, ref_norms = _blocks(ref, block)
  smp_blocks, smp_valid, smp_norms = _blocks(smp, block)
  # Padding gets radius -1: its balls hold nothing, and its own status is dropped below.
  radii = lambda x, valid: np.where(
      valid.ravel(), np.pad(manifold_radii(x, k, block, distances),
                            (0, valid.size - x.shape[0])), -1.0).reshape(valid.shape)
  ref_radii = radii(ref, ref_valid).astype(np.float32)
  smp_radii = radii(smp, smp_valid).astype(np.float32)
  ref_in = [jnp.zeros(ref_blocks.shape[1], bool) for _ in ref_blocks]
  smp_in = [jnp.zeros(smp_blocks.shape[1], bool) for _ in smp_blocks]
  for i, (a, a2, ra) in enumerate(zip(ref_blocks, ref_norms, ref_radii)):
    for j, (b, b2, rb) in enumerate(zip(smp_blocks, smp_norms, smp_radii)):
      ref_in[i], smp_in[j] = _coverage_block(ref_in[i], smp_in[j], a, a2, ra, b, b2, rb,
                                             distances)
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
                what: str = "images", log_every_s: float = 30.0):
  """fn over images [N, ...] in fixed-size batches; returns fn's outputs for all N images.

  fn maps a [batch, ...] array to a tuple of [batch, ...] arrays. The last batch is padded
  (with its own last image) and the padding dropped, so every image counts once and one
  compile serves all batches. With a mesh each batch is sharded over its 'data' axis
  (batch_size rounded up to a multiple of its size). Results are fetched one batch late so
  the host copy overlaps the next batch's compute. Process 0 logs a progress line (done/N,
  images/s, ETA) every log_every_s seconds and once at the end.
  """
  sharding = None
  if mesh is not None:
    sharding = NamedSharding(mesh, P("data"))
    batch_size = -(-batch_size // mesh.shape["data"]) * mesh.shape["data"]
  n = images.shape[0]
  outputs, pending = [], None
  start_time = last_log = time.time()
  talk = jax.process_index() == 0
  for start, count, (batch,) in batching.padded_batches(batch_size, images):
    result = fn(jax.device_put(batch, sharding) if sharding is not None else jnp.asarray(batch))
    if pending is not None:
      outputs.append(tuple(np.asarray(r)[:pending[1]] for r in pending[0]))
    pending = (result, count)
    done = start + count
    if talk and done < n and time.time() - last_log >= log_every_s:
      last_log = time.time()
      rate = done / max(last_log - start_time, 1e-9)
      logging.info("%s: %d/%d, %.1f images/s, ETA %.0f s", what, done, n, rate, (n - done) / rate)
  outputs.append(tuple(np.asarray(r)[:pending[1]] for r in pending[0]))
  if talk:
    elapsed = time.time() - start_time
    logging.info("%s: %d/%d done in %.1f s, %.1f images/s", what, n, n, elapsed,
                 n / max(elapsed, 1e-9))
  return tuple(np.concatenate(parts) for parts in zip(*outputs))


def run_inception(images, model: inception.InceptionV3, batch_size: int = 200
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """uint8 NHWC images [N, ...] -> (pool_3 [N, 2048], spatial [N, 2023], unbiased logits
  [N, 1008]), data-parallel over the local devices."""
  images = check_images(images, "run_inception")
  mesh = data_mesh()
  extract = inception.make_extractor(model, mesh)

  def features(batch):
    out = extract(batch)
    return out.pool, out.spatial, out.logits_unbiased

  return map_batches(features, images, batch_size, mesh, what="inception images")


# ----------------------------------------------------------------------------- reference batches
# An ADM reference batch is an .npz with mu, sigma (pool_3), mu_s, sigma_s (spatial) and arr_0
# (uint8 images for precision/recall; 10k in ADM's). As ADM's evaluator does, statistics the
# file lacks are computed from its arr_0; a file with neither is an error.

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
_STAT_PAIRS = (("mu", "sigma"), ("mu_s", "sigma_s"))


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
  """The arrays of an ADM reference batch: any of mu, sigma, mu_s, sigma_s, and 'images' (its
  arr_0). Needs mu and sigma, or arr_0 to compute them from (see complete_reference)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"reference batch {path!r} not found")
  ref = {}
  with np.load(path, allow_pickle=False) as npz:
    for mu_key, sigma_key in _STAT_PAIRS:
      present = [k for k in (mu_key, sigma_key) if k in npz.files]
      if len(present) == 1:
        raise ValueError(f"reference batch {path!r} has {present[0]!r} without its pair "
                         f"(keys: {npz.files})")
      if present:
        ref[mu_key] = npz[mu_key].astype(np.float64)
        ref[sigma_key] = npz[sigma_key].astype(np.float64)
        d = ref[mu_key].shape
        if len(d) != 1 or ref[sigma_key].shape != 2 * d:
          raise ValueError(f"reference batch {path!r}: {mu_key} {d} and {sigma_key} "
                           f"{ref[sigma_key].shape} are not [d] and [d, d]")
    if "arr_0" in npz.files:
      ref["images"] = check_images(npz["arr_0"], f"reference batch {path!r}")
  if "mu" not in ref and "images" not in ref:
    raise ValueError(f"reference batch {path!r} has neither statistics (mu, sigma) nor arr_0 "
                     f"images to compute them from; build one with python -m "
                     f"pra_jax.tools.reference")
  for mu_key, dims in (("mu", inception.NUM_FEATURES), ("mu_s", inception.NUM_SPATIAL)):
    if mu_key in ref and ref[mu_key].shape != (dims,):
      raise ValueError(f"reference batch {path!r}: {mu_key} has shape {ref[mu_key].shape}, "
                       f"expected ({dims},) as the FID Inception gives")
  return ref


def complete_reference(ref: dict, model: inception.InceptionV3, batch_size: int = 200) -> dict:
  """Runs Inception on the reference images, if any: their pool_3 features ('pool', for
  precision/recall) and, as ADM's evaluator does, mu/sigma and mu_s/sigma_s where the file
  lacks them. Returns a new dict without 'images'."""
  ref = dict(ref)
  images = ref.pop("images", None)
  if images is None:
    return ref
  pool, spatial, _ = run_inception(images, model, batch_size)
  ref["pool"] = pool
  for (mu_key, sigma_key), feats in zip(_STAT_PAIRS, (pool, spatial)):
    if mu_key not in ref:
      logging.info("reference batch: %s/%s computed from its %d arr_0 images", mu_key,
                   sigma_key, len(images))
      ref[mu_key], ref[sigma_key] = feature_statistics(feats)
  return ref


def compute_reference(images, model: inception.InceptionV3, out_path: str,
                      batch_size: int = 200, num_pr_images: int = 10000,
                      seed: int = 0) -> dict[str, np.ndarray]:
  """Writes an ADM-format reference batch from real images (array, .npz or folder path).

  mu, sigma, mu_s and sigma_s come from all images; arr_0 keeps a seeded random subset of
  num_pr_images (sorted, 0 = none) for precision/recall, as ADM's batches hold 10k images.
  """
  if isinstance(images, str):
    images = load_images(images)
  images = check_images(images, "compute_reference")
  if num_pr_images < 0:
    raise ValueError(f"num_pr_images must be >= 0, got {num_pr_images}")
  pool, spatial, _ = run_inception(images, model, batch_size)
  ref = {}
  for (mu_key, sigma_key), feats in zip(_STAT_PAIRS, (pool, spatial)):
    ref[mu_key], ref[sigma_key] = feature_statistics(feats)
  keep = np.sort(np.random.default_rng(seed).permutation(len(images))[:num_pr_images])
  if len(keep):
    ref["arr_0"] = images[keep]
  files.atomic_write(out_path, lambda f: np.savez(f, **ref))
  logging.info("reference batch %s: statistics of %d images, %d kept as arr_0", out_path,
               len(images), len(keep))
  return ref
