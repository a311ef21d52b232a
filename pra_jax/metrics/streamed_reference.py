"""An ADM reference batch written from a stream of image batches, in memory that does not grow
with the image count: running float64 moments for mu/sigma and mu_s/sigma_s, and the arr_0
subset written into the .npz as its images stream past.

The file is the one fid.compute_reference writes for the same images (mu, sigma, mu_s, sigma_s of
all of them; arr_0 the same seeded sorted subset), so pra_jax.evaluate reads either.

Dimension legend (pra_jax's table): B batch, H/W/C image height/width/channels, D feature width.
"""

import time
import zipfile
from collections.abc import Callable, Iterable

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from pra_jax import files
from pra_jax.metrics import fid, inception

# The statistics an ADM reference batch holds, per feature kind (pool_3, sFID's spatial).
_STAT_KEYS = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}

class RunningMoments:
  """Mean and covariance (float64, n - 1 in the denominator as np.cov) of rows added in batches.

  Rows are shifted by the first batch's mean before their sums are taken: the covariance is then
  a difference of small numbers, not of two large ones, whatever the features' offset.
  """

  def __init__(self, dim: int):
    self.count = 0
    self._shift_D = None
    self._sum_D = np.zeros(dim, np.float64)
    self._outer_DD = np.zeros((dim, dim), np.float64)

  def add(self, rows_BD) -> None:
    x_BD = np.asarray(rows_BD, np.float64)
    if x_BD.ndim != 2 or x_BD.shape[1] != len(self._sum_D):
      raise ValueError(f"rows must be [n, {len(self._sum_D)}], got shape {x_BD.shape}")
    if self._shift_D is None:
      self._shift_D = x_BD.mean(axis=0)
    centred_BD = x_BD - self._shift_D
    self._sum_D += centred_BD.sum(axis=0)
    self._outer_DD += centred_BD.T @ centred_BD
    self.count += len(x_BD)

  def statistics(self) -> tuple[np.ndarray, np.ndarray]:
    if self.count < 2:
      raise ValueError(f"a covariance needs at least 2 rows, got {self.count}")
    mean_D = self._sum_D / self.count
    cov_DD = (self._outer_DD - self.count * np.outer(mean_D, mean_D)) / (self.count - 1)
    return self._shift_D + mean_D, cov_DD


def pr_subset(num_images: int, num_pr_images: int, seed: int) -> np.ndarray:
  """The sorted indices kept as arr_0: fid.compute_reference's choice for the same arguments."""
  return np.sort(np.random.default_rng(seed).permutation(num_images)[:num_pr_images])


def inception_features(model: inception.InceptionV3, batch_size: int
                       ) -> Callable[[np.ndarray], tuple[jax.Array, jax.Array]]:
  """images uint8 [b <= batch_size, H, W, C] -> (pool_3 [batch_size, 2048], spatial
  [batch_size, 2023]) on device, data-parallel over the local devices; the batch is padded with
  its last image to one compiled shape (the caller keeps the first b rows)."""
  mesh = fid.data_mesh()
  sharding = None
  if mesh is not None:
    sharding = NamedSharding(mesh, P("data"))
    batch_size = -(-batch_size // mesh.shape["data"]) * mesh.shape["data"]
  extract = inception.make_extractor(model, mesh)

  def features(images_BHWC):
    pad = batch_size - len(images_BHWC)
    if pad < 0:
      raise ValueError(f"a batch of {len(images_BHWC)} images is over batch_size {batch_size}")
    if pad:
      images_BHWC = np.concatenate([images_BHWC, np.repeat(images_BHWC[-1:], pad, axis=0)])
    out = extract(jax.device_put(images_BHWC, sharding) if sharding is not None
                  else jax.numpy.asarray(images_BHWC))
    return out.pool, out.spatial

  return features


def _npy_header(shape: tuple[int, ...]) -> dict:
  return {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
          "shape": shape}


def write_reference(image_batches: Iterable[np.ndarray], num_images: int, features: Callable,
                    out_path: str, num_pr_images: int = 10000, seed: int = 0,
                    log_every_s: float = 30.0) -> dict:
  """Writes the reference .npz of `num_images` images that arrive as uint8 NHWC batches in index
  order; features(batch) -> (pool, spatial) for at least the batch's rows (device arrays: each
  is fetched while the next batch runs). Returns {'num_images', 'num_pr_images', 'mu', ...}.

  Memory: two d x d float64 sums, a batch or two in flight, and none of the images kept.
  """
  if num_pr_images < 0:
    raise ValueError(f"num_pr_images must be >= 0, got {num_pr_images}")
  keep = pr_subset(num_images, num_pr_images, seed)
  moments = {"pool": RunningMoments(inception.NUM_FEATURES),
             "spatial": RunningMoments(inception.NUM_SPATIAL)}
  talk = jax.process_index() == 0
  stats = {}

  def absorb(pending):
    (pool, spatial), count = pending
    moments["pool"].add(np.asarray(pool)[:count])
    moments["spatial"].add(np.asarray(spatial)[:count])

  def stream(member):
    """Runs every batch through `features`; writes the kept images to `member` (or None)."""
    start, pending, kept = 0, None, 0
    t0 = last_log = time.time()
    for batch in image_batches:
      batch = fid.check_images(np.asarray(batch), "a reference batch")
      if member is not None and start == 0:
        np.lib.format.write_array_header_2_0(member, _npy_header((len(keep),) + batch.shape[1:]))
      result = features(batch)            # Dispatched; runs while the last one is fetched.
      if pending is not None:
        absorb(pending)
      pending = (result, len(batch))
      rows = keep[(keep >= start) & (keep < start + len(batch))] - start
      if member is not None and len(rows):
        member.write(np.ascontiguousarray(batch[rows]).tobytes())
        kept += len(rows)
      start += len(batch)
      if talk and time.time() - last_log >= log_every_s:
        last_log = time.time()
        rate = start / max(last_log - t0, 1e-9)
        logging.info("reference: %d/%d images, %.1f images/s, ETA %.0f s", start, num_images,
                     rate, (num_images - start) / rate)
    if pending is not None:
      absorb(pending)
    if start != num_images or kept != len(keep):
      raise ValueError(f"the image stream gave {start} images, expected {num_images}")

  def write(f):
    with zipfile.ZipFile(f, "w", zipfile.ZIP_STORED, allowZip64=True) as npz:
      if len(keep):
        with npz.open("arr_0.npy", "w", force_zip64=True) as member:
          stream(member)
      else:
        stream(None)
      for name, (mu_key, sigma_key) in _STAT_KEYS.items():
        stats[mu_key], stats[sigma_key] = moments[name].statistics()
        for key in (mu_key, sigma_key):
          with npz.open(f"{key}.npy", "w", force_zip64=True) as m:
            np.lib.format.write_array(m, stats[key], allow_pickle=False)

  files.atomic_write(out_path, write)
  logging.info("reference batch %s: statistics of %d images, %d kept as arr_0", out_path,
               num_images, len(keep))
  return {"num_images": num_images, "num_pr_images": len(keep), **stats}
