"""FID / IS / precision-recall behaviour, batching, file errors and the evaluate CLI.

Inception runs with random weights (no download possible): the checks are on behaviour that
holds for any network, e.g. FID of a set against itself is 0 and grows as noise is added.
"""

import hashlib
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver
from PIL import Image

from pra_jax import evaluate
from pra_jax.metrics import fid, inception

BATCH = 4  # As in test_inception.py, so the network compiles once per session.


@pytest.fixture(scope="module")
def model():
  return inception.random_inception(seed=0)


def _smooth_images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
  """uint8 [n, size, size, 3]: random 4x4 colour fields upsampled, so noise is a real change."""
  coarse = np.random.default_rng(seed).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
  return np.stack([np.asarray(Image.fromarray(c).resize((size, size), Image.BILINEAR))
                   for c in coarse])


# ----------------------------------------------------------------------------- FID

def test_frechet_distance_matches_pytorch_fid(monkeypatch):
  # pytorch_fid imports torchvision, whose triton import segfaults after TensorFlow loads;
  # CPU torch never needs triton (see test_inception.py).
  monkeypatch.setitem(sys.modules, "triton", None)
  fid_score = pytest.importorskip("pytorch_fid.fid_score")
  rng = np.random.default_rng(0)
  mix = rng.normal(size=(32, 32))
  f1 = rng.normal(size=(400, 32)) @ mix
  f2 = rng.normal(size=(300, 32)) @ mix * 1.3 + 0.5
  (mu1, s1), (mu2, s2) = fid.feature_statistics(f1), fid.feature_statistics(f2)
  ours = fid.frechet_distance(mu1, s1, mu2, s2)
  ref = fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)
  assert ours > 1.0
  assert abs(ours - ref) <= 1e-6 * abs(ref)


@pytest.mark.parametrize("n", [12, 60])  # n <= d: the n x n path; n > d: frechet_distance.
def test_fid_from_features_equals_frechet_distance(n):
  rng = np.random.default_rng(n)
  feats = rng.normal(size=(n, 40)) * 2.0 + 1.0
  mu, sigma = fid.feature_statistics(rng.normal(size=(500, 40)) @ rng.normal(size=(40, 40)))
  want = fid.frechet_distance(*fid.feature_statistics(feats), mu, sigma)
  np.testing.assert_allclose(fid.fid_from_features(feats, mu, sigma), want, rtol=1e-6)


def test_fid_is_zero_on_itself_and_grows_with_noise(model):
  clean = _smooth_images(BATCH)
  noise = np.random.default_rng(1).normal(size=clean.shape)
  levels = [0.0, 8.0, 24.0, 64.0]
  noisy = np.concatenate([np.clip(clean + s * noise, 0, 255).astype(np.uint8) for s in levels])
  pool, _ = fid.run_inception(noisy, model, BATCH)
  sets = np.split(pool, len(levels))
  mu, sigma = fid.feature_statistics(sets[0])
  fids = [fid.fid_from_features(s, mu, sigma) for s in sets]
  print("FID by noise level:", dict(zip(levels, fids)))
  assert abs(fids[0]) < 1e-6 * np.trace(sigma)
  assert all(a < b for a, b in zip(fids, fids[1:])), fids


# ----------------------------------------------------------------------------- IS

def test_inception_score_of_one_repeated_image_is_one(model):
  images = np.repeat(_smooth_images(1, seed=3), BATCH, axis=0)
  _, logits = fid.run_inception(images, model, BATCH)
  assert fid.inception_score(logits, splits=2) == pytest.approx(1.0, abs=1e-5)


def test_inception_score_of_confident_distinct_classes_is_their_number():
  logits = np.full((1000, 1008), -30.0)
  logits[np.arange(1000), np.arange(1000) % 50] = 30.0  # 50 classes, 20 each, split-balanced.
  assert fid.inception_score(logits) == pytest.approx(50.0, rel=1e-6)
  assert fid.inception_score(logits, splits=1) == pytest.approx(50.0, rel=1e-6)


# ----------------------------------------------------------------------------- precision/recall

def _precision_recall_bruteforce(ref, smp, k=3):
  """ADM's definition, spelled out in float64 numpy."""
  def sq(a, b):
    return ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
  ref_r = np.sort(sq(ref, ref), axis=1)[:, k]
  smp_r = np.sort(sq(smp, smp), axis=1)[:, k]
  d = sq(ref, smp)
  return (d <= ref_r[:, None]).any(0).mean(), (d <= smp_r[None, :]).any(1).mean()


def test_precision_recall_matches_definition_across_blocks():
  rng = np.random.default_rng(0)
  ref = rng.normal(size=(37, 6)).astype(np.float32)
  smp = (rng.normal(size=(29, 6)) * 1.2 + 1.0).astype(np.float32)
  want = _precision_recall_bruteforce(ref.astype(np.float64), smp.astype(np.float64))
  assert 0.05 < want[0] < 0.95 and 0.05 < want[1] < 0.95  # Neither trivially 0 nor 1.
  for block in (10000, 8):  # One block, and ragged padded blocks.
    assert fid.precision_recall(ref, smp, k=3, block=block) == pytest.approx(want, abs=1e-12)


def test_precision_recall_of_a_set_with_itself_is_one_and_disjoint_is_zero(model):
  pool, _ = fid.run_inception(_smooth_images(BATCH * 2, seed=5), model, BATCH)
  assert fid.precision_recall(pool, pool) == (1.0, 1.0)
  assert fid.precision_recall(pool, pool + 1e3) == (0.0, 0.0)


# ----------------------------------------------------------------------------- batching

def test_map_batches_counts_every_image_once_in_order():
  images = np.arange(13 * 2, dtype=np.uint8).reshape(13, 2)
  seen = []

  def fn(batch):
    seen.append(batch.shape[0])
    return batch * 2, batch.sum(axis=1)

  doubled, sums = fid.map_batches(fn, images, batch_size=4)
  assert seen == [4, 4, 4, 4]  # One batch shape, the last one padded.
  np.testing.assert_array_equal(doubled, images * 2)
  np.testing.assert_array_equal(sums, images.sum(axis=1))


def test_map_batches_shards_over_a_data_mesh():
  script = """
import jax, numpy as np
from pra_jax.metrics import fid
mesh = fid.data_mesh()
assert mesh is not None and mesh.shape["data"] == 2, mesh
shardings = []
def fn(batch):
  shardings.append(len(batch.sharding.device_set))
  return (jax.jit(lambda b: b.astype(np.int32) + 1)(batch),)
(out,) = fid.map_batches(fn, np.arange(7, dtype=np.uint8), batch_size=3, mesh=mesh)
assert shardings == [2, 2], shardings  # batch 3 rounded up to 4: two batches over 2 devices.
np.testing.assert_array_equal(out, np.arange(7) + 1)
print("sharded ok")
"""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", PYTHONPATH=os.getcwd())
  res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                       timeout=120)
  assert res.returncode == 0 and "sharded ok" in res.stdout, res.stderr[-2000:]


# ----------------------------------------------------------------------------- file errors

def test_reference_without_mu_sigma_names_the_file(tmp_path):
  path = tmp_path / "ref_images_only.npz"
  np.savez(path, arr_0=_smooth_images(2))
  with pytest.raises(ValueError, match=r"ref_images_only\.npz.*lacks \['mu', 'sigma'\]"):
    fid.load_reference(str(path))


@pytest.mark.parametrize("arrays, match", [
    ({"arr_0": np.zeros((2, 8, 8, 3), np.float32)}, r"uint8.*float32"),
    ({"arr_0": np.zeros((2, 8, 8), np.uint8)}, r"NHWC.*\(2, 8, 8\)"),
    ({"arr_0": np.zeros((2, 8, 8, 4), np.uint8)}, r"NHWC.*\(2, 8, 8, 4\)"),
    ({"images": np.zeros((2, 8, 8, 3), np.uint8)}, r"no 'arr_0'"),
    ({"arr_0": np.zeros((2, 8, 8, 3), np.uint8), "arr_1": np.zeros(3)}, r"labels"),
])
def test_bad_samples_name_the_file(tmp_path, arrays, match):
  path = tmp_path / "bad_samples.npz"
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=r"bad_samples\.npz.*" + match):
    evaluate.load_samples(str(path))


def test_image_folder_reference(tmp_path, model):
  folder = tmp_path / "real"
  folder.mkdir()
  images = _smooth_images(BATCH + 1, seed=7)  # Not a whole batch: padding is dropped.
  for i, im in enumerate(images):
    Image.fromarray(im).save(folder / f"{i:03d}.png")
  np.testing.assert_array_equal(fid.load_images(str(folder)), images)
  ref = fid.compute_reference(str(folder), model, str(tmp_path / "ref.npz"), BATCH,
                              num_pr_images=3)
  loaded = fid.load_reference(str(tmp_path / "ref.npz"))
  assert loaded["images"].shape == (3, 32, 32, 3) and loaded["mu"].shape == (2048,)
  np.testing.assert_allclose(loaded["sigma"], ref["sigma"])
  pool, _ = fid.run_inception(images, model, BATCH)
  np.testing.assert_allclose(loaded["mu"], pool.mean(axis=0), rtol=1e-6)


# ----------------------------------------------------------------------------- the CLI

def test_evaluate_cli_end_to_end(tmp_path, model):
  weights = tmp_path / "inception_random.npz"
  inception.save_inception(model, str(weights))
  samples = tmp_path / "samples.npz"
  np.savez(samples, arr_0=_smooth_images(BATCH + 2, seed=11), arr_1=np.arange(BATCH + 2))
  ref = tmp_path / "ref.npz"
  fid.compute_reference(_smooth_images(BATCH, seed=12), model, str(ref), BATCH)

  res = subprocess.run(
      [sys.executable, "-m", "pra_jax.evaluate", f"--samples={samples}", f"--ref={ref}",
       f"--inception={weights}", f"--batch_size={BATCH}", "--is_splits=2"],
      env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=os.path.dirname(os.path.dirname(__file__)),
      capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  out = json.loads((tmp_path / "samples.metrics.json").read_text())
  assert set(out) == {"fid", "inception_score", "precision", "recall", "num_images",
                      "inception_sha256"}
  assert out["num_images"] == BATCH + 2
  assert out["inception_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
  assert out["fid"] > 0 and out["inception_score"] >= 1.0
  assert 0.0 <= out["precision"] <= 1.0 and 0.0 <= out["recall"] <= 1.0
  assert json.loads(res.stdout.strip().splitlines()[-1]) == out
  # The library entry the trainer uses gives the same numbers.
  images, labels = evaluate.load_samples(str(samples))
  again = evaluate.evaluate_inception(images, labels, str(ref), str(weights), BATCH, is_splits=2)
  for key in ("precision", "recall", "num_images", "inception_sha256"):
    assert again[key] == out[key]
  assert again["fid"] == pytest.approx(out["fid"], rel=1e-5)
  assert again["inception_score"] == pytest.approx(out["inception_score"], rel=1e-5)


def test_evaluate_cli_digits_branch(tmp_path, monkeypatch):
  calls = []

  def evaluate_digits(images, labels, cache_dir):
    calls.append((images.shape, labels.tolist(), cache_dir))
    return {"probe_accuracy": np.float32(0.75), "num_images": 2}

  monkeypatch.setitem(sys.modules, "pra_jax.metrics.digits",
                      types.SimpleNamespace(evaluate_digits=evaluate_digits))
  samples = tmp_path / "digits.npz"
  np.savez(samples, arr_0=np.zeros((2, 16, 16, 1), np.uint8), arr_1=np.array([3, 4]))
  if not evaluate._FLAGS:  # The CLI defines its flags only when run as the program.
    evaluate._FLAGS.update(evaluate._define_flags())
  flags.FLAGS.mark_as_parsed()
  with flagsaver.flagsaver(samples=str(samples), metrics="digits"):
    evaluate.main(["evaluate"])
  assert calls == [((2, 16, 16, 1), [3, 4], str(tmp_path))]
  out = json.loads((tmp_path / "digits.metrics.json").read_text())
  assert out == {"probe_accuracy": 0.75, "num_images": 2}
