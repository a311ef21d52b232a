"""Tests of the digits judge: it tells real digits from noise and wrong labels, and caches itself.

The digits judge trains once per image size per session (module fixture); the rest reuses it.
"""

import os
import types
import warnings

import numpy as np
import pytest

from pra_jax.data import load_digits_split
from pra_jax.metrics import digits


@pytest.fixture(scope="module", params=[16, 32], ids=lambda s: f"{s}px")
def judge(request, tmp_path_factory):
  """A cache dir holding a trained judge, the judge, and the real splits."""
  size = request.param
  cache_dir = str(tmp_path_factory.mktemp(f"digits_cache_{size}"))
  trained = []
  with pytest.MonkeyPatch.context() as patch:  # Counts the trainings: a cold cache trains once.
    patch.setattr(digits, "train_classifier",
                  lambda *a, real=digits.train_classifier, **k: trained.append(1) or real(*a, **k))
    model = digits.load_or_train_classifier(size, cache_dir)
  assert trained == [1]
  return types.SimpleNamespace(
      size=size, cache_dir=cache_dir, model=model,
      eval=load_digits_split("eval", size), train=load_digits_split("train", size))


def test_classifier_is_accurate_on_held_out_digits(judge):
  images, labels = judge.eval
  assert (digits.predict(judge.model, images) == labels).mean() >= 0.95


def test_real_digits_score_well(judge):
  images, labels = judge.eval
  m = digits.evaluate_digits(images, labels, judge.cache_dir)
  assert m["digits_accuracy"] >= 0.95
  assert m["digits_classifier_eval_accuracy"] >= 0.95
  assert m["digits_num_images"] == len(images)
  # The eval set against itself: zero up to rounding.
  assert 0.0 <= m["digits_fd"] < 1e-6
  # Unseen-by-the-metric real digits (the train split) are still close to 'eval'.
  train_images, train_labels = judge.train
  m = digits.evaluate_digits(train_images[:500], train_labels[:500], judge.cache_dir)
  assert m["digits_accuracy"] >= 0.95
  assert m["digits_fd"] < 10.0


def test_noise_scores_at_chance_and_far(judge):
  images, labels = judge.train
  real = digits.evaluate_digits(images[:500], labels[:500], judge.cache_dir)
  noise = np.random.default_rng(0).integers(0, 256, (500, judge.size, judge.size, 1), np.uint8)
  m = digits.evaluate_digits(noise, np.arange(500) % 10, judge.cache_dir)
  assert m["digits_accuracy"] <= 0.3
  assert m["digits_fd"] > 20 * real["digits_fd"]


def test_wrong_labels_score_low(judge):
  images, labels = judge.eval
  # Every label moved to another class, so a perfect judge would score 0.
  wrong = (labels + np.random.default_rng(1).integers(1, 10, len(labels))) % 10
  m = digits.evaluate_digits(images, wrong, judge.cache_dir)
  assert m["digits_accuracy"] <= 0.05


def test_fd_grows_with_noise(judge):
  images, labels = judge.train[0][:500], judge.train[1][:500]
  rng = np.random.default_rng(2)
  fds = []
  for sigma in (0, 40, 80, 160):
    noisy = np.clip(images + rng.normal(0.0, sigma, images.shape), 0, 255).astype(np.uint8)
    fds.append(digits.evaluate_digits(noisy, labels, judge.cache_dir)["digits_fd"])
  assert all(a < b for a, b in zip(fds, fds[1:])), fds


def test_fd_raises_no_singular_matrix_warning(judge):
  # At 16px one of the judge's 64 GELU features is dead (constant over the digits), so both
  # covariances are singular; sqrtm of their product warned "Matrix is singular" in the demo,
  # evaluate and these tests. The trace-of-sqrt formulation is exact there and silent.
  images, labels = judge.train[0][:500], judge.train[1][:500]
  with warnings.catch_warnings():
    warnings.simplefilter("error", RuntimeWarning)
    fd = digits.evaluate_digits(images, labels, judge.cache_dir)["digits_fd"]
  assert 0.0 < fd < 10.0


def test_cache_is_written_once_and_reused(judge):
  path = digits.cache_path(judge.cache_dir, judge.size)
  assert os.path.isfile(path)
  assert f"v{digits.CACHE_VERSION}" in os.path.basename(path)
  assert f"s{judge.size}" in os.path.basename(path)
  # No temp files left behind by the atomic write.
  assert os.listdir(judge.cache_dir) == [os.path.basename(path)]
  mtime = os.stat(path).st_mtime_ns
  with pytest.MonkeyPatch.context() as patch:  # A warm cache never trains.
    patch.setattr(digits, "train_classifier", lambda *a, **k: pytest.fail("retrained"))
    loaded = digits.load_or_train_classifier(judge.size, judge.cache_dir)
  assert os.stat(path).st_mtime_ns == mtime
  images = judge.eval[0][:64]
  np.testing.assert_array_equal(digits.classifier_outputs(loaded, images)[1],
                                digits.classifier_outputs(judge.model, images)[1])


def _write_wrong_shapes(path):
  np.savez(path, **{"conv1/kernel": np.zeros((2, 2), np.float32)})


def _write_truncated(path, good_path):
  with open(good_path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong_shapes"])
def test_corrupt_cache_is_retrained_with_a_warning(judge, tmp_path, monkeypatch, damage):
  path = digits.cache_path(str(tmp_path), judge.size)
  if damage == "garbage":
    with open(path, "wb") as f:
      f.write(b"not an npz at all")
  elif damage == "truncated":
    _write_truncated(path, digits.cache_path(judge.cache_dir, judge.size))
  else:
    with open(path, "wb") as f:
      _write_wrong_shapes(f)
  # Stand in for training (already tested by the fixture) and record that it happened.
  retrained = []
  monkeypatch.setattr(digits, "train_classifier",
                      lambda size, seed: retrained.append(size) or judge.model)
  with pytest.warns(RuntimeWarning, match="unreadable"):
    model = digits.load_or_train_classifier(judge.size, str(tmp_path))
  assert retrained == [judge.size] and model is judge.model
  # The file was replaced by a good one: the next call loads it silently.
  with warnings.catch_warnings():
    warnings.simplefilter("error", RuntimeWarning)
    digits.load_or_train_classifier(judge.size, str(tmp_path))
  assert retrained == [judge.size]


def test_training_is_deterministic_given_seed():
  a, b, c = (digits.train_classifier(16, seed=s, num_epochs=1) for s in (0, 0, 1))
  images = load_digits_split("eval", 16)[0][:32]
  fa, fb, fc = (digits.classifier_features(m, images) for m in (a, b, c))
  np.testing.assert_array_equal(fa, fb)
  assert not np.allclose(fa, fc)


def _good(size=16, n=20):
  return np.zeros((n, size, size, 1), np.uint8), np.arange(n) % 10


@pytest.mark.parametrize("images, labels, kwargs, message", [
    (_good()[0].astype(np.float32), _good()[1], {}, "uint8"),
    (_good()[0][..., 0], _good()[1], {}, r"NHWC \[n, S, S, 1\]"),
    (np.zeros((20, 16, 16, 3), np.uint8), _good()[1], {}, "1 channel"),
    (np.zeros((20, 16, 12, 1), np.uint8), _good()[1], {}, "square"),
    (_good()[0], _good()[1], {"image_size": 32}, "image_size 32"),
    (_good()[0], _good()[1][:19], {}, r"labels must be \[n=20\]"),
    (_good()[0], _good()[1] + 1, {}, r"0\.\.9"),
    (_good()[0], _good()[1] - 1, {}, r"0\.\.9"),
    (_good()[0], _good()[1].astype(np.float32), {}, "integers"),
])
def test_bad_inputs_raise_naming_the_expectation(tmp_path, images, labels, kwargs, message):
  with pytest.raises(ValueError, match=message):
    digits.evaluate_digits(images, labels, str(tmp_path), **kwargs)
  # Rejected before any training or caching.
  assert os.listdir(tmp_path) == []


def test_helpers_reject_images_of_another_size(judge):
  other = 32 if judge.size == 16 else 16
  with pytest.raises(ValueError, match=f"{judge.size}, {judge.size}, 1"):
    digits.predict(judge.model, np.zeros((4, other, other, 1), np.uint8))
