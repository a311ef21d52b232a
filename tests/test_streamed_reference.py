"""The streamed reference batch (metrics/streamed_reference.py): running float64 moments equal
np.cov's, and the .npz it writes batch by batch is the one fid.compute_reference writes, read by
the evaluator's own loader. Features here are a fixed random projection (no Inception compile):
what is tested is the streaming, not the network."""

import numpy as np
import pytest

from pra_jax.metrics import fid, inception, streamed_reference


def _images(n, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def _projection(seed=1):
  rng = np.random.default_rng(seed)
  pool = rng.normal(size=(8 * 8 * 3, inception.NUM_FEATURES)).astype(np.float32)
  spatial = rng.normal(size=(8 * 8 * 3, inception.NUM_SPATIAL)).astype(np.float32)
  # Features with a large common offset, as pool_3's non-negative activations have one.
  return lambda x: (x.reshape(len(x), -1) / 255.0 @ pool + 40.0,
                    np.tanh(x.reshape(len(x), -1) / 255.0 @ spatial))


def test_running_moments_equal_np_cov_over_uneven_batches():
  rows = np.random.default_rng(2).normal(loc=30.0, size=(103, 5))
  moments = streamed_reference.RunningMoments(5)
  for start in (0, 1, 40, 77):   # Batches of 1, 39, 37 and 26 rows.
    moments.add(rows[start:{0: 1, 1: 40, 40: 77, 77: 103}[start]])
  mu, sigma = moments.statistics()
  np.testing.assert_allclose(mu, rows.mean(axis=0), rtol=1e-13)
  np.testing.assert_allclose(sigma, np.cov(rows, rowvar=False), rtol=1e-11, atol=1e-13)
  with pytest.raises(ValueError, match=r"rows must be \[n, 5\]"):
    moments.add(rows[:, :4])


def test_streamed_reference_is_the_file_compute_reference_writes(tmp_path):
  images, features = _images(23), _projection()
  out = str(tmp_path / "ref.npz")
  batches = (images[s:s + 5] for s in range(0, len(images), 5))   # The last one of 3.
  got = streamed_reference.write_reference(batches, len(images), features, out, num_pr_images=6,
                                         seed=4)
  pool, spatial = features(images)
  ref = fid.load_reference(out)
  assert sorted(np.load(out).files) == ["arr_0", "mu", "mu_s", "sigma", "sigma_s"]
  for (mu, sigma), feats in ((("mu", "sigma"), pool), (("mu_s", "sigma_s"), spatial)):
    want_mu, want_sigma = fid.feature_statistics(feats)
    np.testing.assert_allclose(ref[mu], want_mu, rtol=1e-12)
    np.testing.assert_allclose(ref[sigma], want_sigma, rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(ref[sigma], got[sigma])
  # compute_reference's subset for the same (count, size, seed): sorted, seeded.
  keep = np.sort(np.random.default_rng(4).permutation(len(images))[:6])
  np.testing.assert_array_equal(ref["images"], images[keep])
  assert got["num_images"] == 23 and got["num_pr_images"] == 6

  streamed_reference.write_reference(iter([images[:5], images[5:]]), len(images), features,
                                   str(tmp_path / "stats_only.npz"), num_pr_images=0)
  assert sorted(np.load(tmp_path / "stats_only.npz").files) == ["mu", "mu_s", "sigma", "sigma_s"]
  with pytest.raises(ValueError, match="gave 5 images, expected 23"):
    streamed_reference.write_reference(iter([images[:5]]), len(images), features,
                                     str(tmp_path / "short.npz"))
  assert not (tmp_path / "short.npz").exists()
