"""FID / sFID / IS / precision-recall by ADM's evaluator's rules, batching, reference batches,
file errors and the evaluate and reference CLIs.

Inception runs with random weights (no download possible): the checks are on behaviour that
holds for any network, e.g. FID of a set against itself is 0 and grows as noise is added.
"""

import hashlib
import json
import os
import subprocess
import sys
import types
import warnings

import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver
from PIL import Image

from pra_jax import evaluate  # The CLI: its main runs in-process below.
from pra_jax.metrics import fid, inception, scoring

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


def test_frechet_distance_is_exact_and_silent_for_singular_covariances():
  # A dead feature (constant in both sets, as the 16px digits judge has one) makes both
  # covariances singular: the distance is then the one over the live features plus the squared
  # gap of the constants. sqrtm of the product warned "Matrix is singular" here.
  rng = np.random.default_rng(3)
  mix = rng.normal(size=(8, 8))
  f1, f2 = rng.normal(size=(300, 8)) @ mix, rng.normal(size=(200, 8)) @ mix * 1.2 + 0.3
  live = fid.frechet_distance(*fid.feature_statistics(f1), *fid.feature_statistics(f2))
  dead1 = np.concatenate([f1, np.full((300, 1), 0.25)], axis=1)
  dead2 = np.concatenate([f2, np.full((200, 1), -0.5)], axis=1)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    got = fid.frechet_distance(*fid.feature_statistics(dead1), *fid.feature_statistics(dead2))
    # Fewer samples than dims (rank 5 of 8): equal to the exact n x n route of fid_from_features.
    few = f1[:6]
    mu, sigma = fid.feature_statistics(f2)
    lowrank = fid.frechet_distance(*fid.feature_statistics(few), mu, sigma)
  assert got == pytest.approx(live + 0.75 ** 2, rel=1e-9)
  assert lowrank == pytest.approx(fid.fid_from_features(few, mu, sigma), rel=1e-9)


def test_frechet_trace_is_exact_with_fewer_samples_than_dims_and_dead_features():
  # Both sets n < d, feature scales over 6 decades, every 7th feature constant: many real
  # eigenvalues of the product are tiny. The independent value: with S_i = A_i^T A_i (centred
  # features over sqrt(n - 1)), Tr sqrt(S1 S2) is the nuclear norm of A1 A2^T (float64 SVD).
  # An eigenvalue noise cut-off (d * eps * max) zeroed real ones: 2e-5 to 7e-5 off here.
  rng = np.random.default_rng(0)
  d = 512
  scales = np.logspace(-5, 1, d)

  def features(n, gain):
    f = rng.normal(size=(n, d)) * scales * gain
    f[:, ::7] = 0.7
    return f

  f1, f2 = features(200, 1.0), features(300, 1.1)
  a1, a2 = [(f - f.mean(0)) / np.sqrt(len(f) - 1) for f in (f1, f2)]
  want_trace = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()
  (mu1, s1), (mu2, s2) = fid.feature_statistics(f1), fid.feature_statistics(f2)
  want = (mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2.0 * want_trace
  assert abs(fid.trace_sqrt_product(s1, s2) - want_trace) < 1e-7
  assert abs(fid.frechet_distance(mu1, s1, mu2, s2) - want) < 1e-7
  assert abs(fid.fid_from_features(f1, mu2, s2) - want) < 1e-7


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
  pool, spatial, _ = fid.run_inception(noisy, model, BATCH)
  assert pool.shape == (len(noisy), 2048) and spatial.shape == (len(noisy), 17 * 17 * 7)
  for name, feats in (("FID", pool), ("sFID", spatial)):
    sets = np.split(feats, len(levels))
    mu, sigma = fid.feature_statistics(sets[0])
    fids = [fid.fid_from_features(s, mu, sigma) for s in sets]
    print(f"{name} by noise level:", dict(zip(levels, fids)))
    assert abs(fids[0]) < 1e-6 * np.trace(sigma)
    assert all(a < b for a, b in zip(fids, fids[1:])), (name, fids)


# ----------------------------------------------------------------------------- IS

def test_inception_score_of_one_repeated_image_is_one(model):
  images = np.repeat(_smooth_images(1, seed=3), BATCH, axis=0)
  _, _, logits = fid.run_inception(images, model, BATCH)
  assert fid.inception_score(logits, split_size=2) == pytest.approx(1.0, abs=1e-5)


def _confident_logits(classes) -> np.ndarray:
  logits = np.full((len(classes), 1008), -30.0)
  logits[np.arange(len(classes)), classes] = 30.0
  return logits


@pytest.mark.parametrize("n, want", [
    (10_000, 5.0),   # Parts of 5000 hold 5 classes each; 10 splits of 1000 would hold 1 (IS 1).
    (1_000, 1.0),    # One part of 1000 (ADM) holding a single class.
    (12_000, 4.0),   # Parts 5000, 5000, 2000: 5, 5 and 2 classes.
])
def test_inception_score_uses_adms_parts_of_5000(n, want):
  # Images sorted by class, 1000 per class: a part's score is its number of classes.
  assert fid.IS_SPLIT_SIZE == 5000
  assert fid.inception_score(_confident_logits(np.arange(n) // 1000)) == pytest.approx(want)


def _adm_inception_score(logits, split_size=5000):
  """ADM's formula spelled out: float32 softmax, then log of the part and of its mean."""
  z = logits.astype(np.float32)
  e = np.exp(z - z.max(axis=1, keepdims=True))
  preds = e / e.sum(axis=1, keepdims=True)
  scores = []
  for i in range(0, len(preds), split_size):
    part = preds[i:i + split_size]
    kl = part * (np.log(part) - np.log(np.mean(part, 0, keepdims=True)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  return float(np.mean(scores))


@pytest.mark.parametrize("n", [1_000, 10_000, 12_345])
def test_inception_score_matches_adms_formula(n):
  logits = np.random.default_rng(n).normal(size=(n, 1008)) * 6.0  # Confident, many classes.
  ours = fid.inception_score(logits)
  assert ours == pytest.approx(_adm_inception_score(logits), rel=1e-4)
  # And it is not the fixed-10-splits rule, which at these counts reads far lower.
  ten = np.mean([_adm_inception_score(p, len(p)) for p in np.array_split(logits, 10)])
  assert ours > 1.1 * ten


def test_inception_score_of_confident_distinct_classes_is_their_number():
  logits = _confident_logits(np.arange(1000) % 50)
  assert fid.inception_score(logits) == pytest.approx(50.0, rel=1e-6)
  assert fid.inception_score(logits, split_size=1000) == pytest.approx(50.0, rel=1e-6)


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
    assert fid.precision_recall(ref, smp, k=3, block=block,
                                distances="float32") == pytest.approx(want, abs=1e-12)


def _tf_half_sum(v, first):
  """TF's CPU float16 reduce_sum of one row v (float16) at flat index `first`, one element at a
  time: Eigen splits a run of more than 200 packets of 8 in two at a packet boundary; a run
  fills 4 packet accumulators, adds them in order and the leftover packets to the first, sums
  the packet's lanes in float32 (rounded once) and the leftover scalars in float16."""
  n, packet = len(v), 8
  if n > packet * 200:
    split = packet * -(-(first + -(-n // 2)) // packet)
    left = min(split - first, n)
    total = _tf_half_sum(v[:left], first)
    return total if left == n else np.float16(total + _tf_half_sum(v[left:], split))
  lanes = [[np.float16(0)] * packet for _ in range(4)]
  unrolled = (n // 32) * 32 if n >= 32 else 0
  for j in range(unrolled):
    acc, lane = (j % 32) // packet, j % packet
    lanes[acc][lane] = np.float16(lanes[acc][lane] + v[j])
  lane_sums = lanes[0]
  for acc in lanes[1:]:
    lane_sums = [np.float16(x + y) for x, y in zip(lane_sums, acc)]
  for j in range(unrolled, (n // packet) * packet):
    lane_sums[j % packet] = np.float16(lane_sums[j % packet] + v[j])
  scalar = np.float16(0)
  for j in range((n // packet) * packet, n):
    scalar = np.float16(scalar + v[j])
  f = [np.float32(x) for x in lane_sums]
  return np.float16(scalar + np.float16(((f[0] + f[4]) + (f[2] + f[6]))
                                        + ((f[1] + f[5]) + (f[3] + f[7]))))


def _tf_half_norms(x16):
  return np.array([_tf_half_sum(row, i * x16.shape[1]) for i, row in enumerate(x16 * x16)],
                  np.float16)


def _adm_float16_distances(a, b):
  """ADM's float16-first block distances, spelled out in numpy float16 (one rounding per op):
  norms summed in float16 as TF's CPU reduce_sum does (_tf_half_sum), a.b accumulated in
  float32 and rounded, as a float16 GEMM with float32 accumulation does; a block holding an
  inf is redone in float32."""
  a16, b16 = a.astype(np.float16), b.astype(np.float16)
  with np.errstate(over="ignore", invalid="ignore"):  # Overflow to inf is the point.
    a2 = _tf_half_norms(a16)[:, None]
    b2 = _tf_half_norms(b16)[None, :]
    ab = (a16.astype(np.float32) @ b16.astype(np.float32).T).astype(np.float16)
    d = np.maximum((a2 - np.float16(2) * ab) + b2, np.float16(0))
  if np.isfinite(d).all():
    return d.astype(np.float32)
  a, b = a.astype(np.float32), b.astype(np.float32)
  return np.maximum((a * a).sum(1)[:, None] - 2 * a @ b.T + (b * b).sum(1)[None, :], 0)


def _blockwise(fn, a, b, block):
  """fn over row blocks of a and b, as ADM feeds them (each block one tensor)."""
  return np.concatenate([np.concatenate([fn(a[i:i + block], b[j:j + block])
                                         for j in range(0, len(b), block)], axis=1)
                         for i in range(0, len(a), block)], axis=0)


def _precision_recall_adm16(ref, smp, k=3, block=10000):
  dist = lambda a, b: _blockwise(_adm_float16_distances, a, b, block)
  ref_r = np.sort(dist(ref, ref), axis=1)[:, k]
  smp_r = np.sort(dist(smp, smp), axis=1)[:, k]
  d = dist(ref, smp)
  return (d <= ref_r[:, None]).any(0).mean(), (d <= smp_r[None, :]).any(1).mean()


def _clustered_features(seed: int, offset: float):
  """Two overlapping clouds far from the origin: |a|^2 - 2 a.b + |b|^2 cancels ~offset^2 down
  to distances ~1, so float16's rounding of the norms (spacing 8 at 1e4) decides membership."""
  rng = np.random.default_rng(seed)
  base = np.zeros(4, np.float32)
  base[0] = offset
  ref = (base + rng.normal(size=(60, 4))).astype(np.float32)
  smp = (base + 0.3 + 1.1 * rng.normal(size=(50, 4))).astype(np.float32)
  return ref, smp


def test_precision_recall_float16_adm_rounds_as_adm_does():
  ref, smp = _clustered_features(0, offset=100.0)
  exact = _precision_recall_bruteforce(ref.astype(np.float64), smp.astype(np.float64))
  adm = _precision_recall_adm16(ref, smp, block=16)
  got16 = fid.precision_recall(ref, smp, k=3, block=16, distances="float16_adm")
  got32 = fid.precision_recall(ref, smp, k=3, block=16, distances="float32")
  print(f"precision/recall exact {exact}, float32 {got32}, ADM float16 {adm}, ours {got16}")
  assert got16 == pytest.approx(adm, abs=1e-12)  # Same roundings as the spelled-out model.
  assert got32 == pytest.approx(exact, abs=1e-12)
  assert got16 != pytest.approx(got32, abs=0.02)  # The option changes the answer here.
  assert fid.precision_recall(ref, smp, k=3) == got16  # float16_adm is the default.


def test_precision_recall_float16_adm_falls_back_to_float32_on_overflow():
  # Norms of ~300^2 = 9e4 overflow float16 (max 65504): every block is redone in float32.
  ref, smp = _clustered_features(1, offset=300.0)
  got16 = fid.precision_recall(ref, smp, k=3, block=16, distances="float16_adm")
  assert got16 == fid.precision_recall(ref, smp, k=3, block=16, distances="float32")
  assert got16 == pytest.approx(_precision_recall_adm16(ref, smp, block=16), abs=1e-12)


def _tf_session():
  """A TF1 graph-mode session (ADM's evaluator runs tf.compat.v1 graphs) and its graph."""
  import tensorflow as tf
  graph = tf.Graph()
  return tf, graph, tf.compat.v1.Session(graph=graph)


@pytest.mark.parametrize("dims", [3, 8, 33, 100, 1601, 2023, 2048])
def test_float16_norms_are_tensorflows_reduce_sum(dims):
  # TF's CPU float16 reduce_sum accumulates in float16 in Eigen's order: the spelled-out model
  # (_tf_half_sum) and fid's vectorised one equal TF bit for bit; a float32 sum rounded once
  # (what float16_adm did before) does not.
  tf, graph, sess = _tf_session()
  with graph.as_default():
    x = tf.compat.v1.placeholder(tf.float16, [None, None])
    norms = tf.reduce_sum(tf.square(x), 1)
  rng = np.random.default_rng(dims)
  feats = (np.abs(rng.normal(size=(24, dims))) * 0.45).astype(np.float16)
  want = sess.run(norms, {x: feats})
  np.testing.assert_array_equal(_tf_half_norms(feats), want)
  np.testing.assert_array_equal(fid.tf_cpu_half_row_sums(feats * feats), want)
  if dims >= 33:
    float32_sum = (feats * feats).astype(np.float32).sum(1).astype(np.float16)
    assert (float32_sum != want).any()


def _tensorflow_adm_precision_recall(ref, smp, k=3, block=10000):
  """Precision, recall and both sets' k-NN radii as ADM's evaluator computes them, in a TF1
  graph: float16 features, norms by reduce_sum of squares, |u|^2 - 2 u.v + |v|^2 clipped at 0,
  the block redone in float32 if any distance is not finite; radius = k-th smallest distance
  beside the point's own; a point is covered if within some ball of the other set."""
  tf, graph, sess = _tf_session()
  v1 = tf.compat.v1
  with graph.as_default():
    u_in, v_in = v1.placeholder(tf.float32, [None, None]), v1.placeholder(tf.float32, [None, None])

    def distances(u, v):
      nu = tf.reshape(tf.reduce_sum(tf.square(u), 1), [-1, 1])
      nv = tf.reshape(tf.reduce_sum(tf.square(v), 1), [1, -1])
      return tf.maximum(nu - 2 * tf.matmul(u, v, False, True) + nv, 0.0)

    u16, v16 = tf.cast(u_in, tf.float16), tf.cast(v_in, tf.float16)
    d16 = distances(u16, v16)
    product16 = tf.matmul(u16, v16, False, True)
    d = tf.cond(tf.reduce_all(tf.math.is_finite(d16)), lambda: tf.cast(d16, tf.float32),
                lambda: distances(u_in, v_in))
  dist = lambda a, b: _blockwise(lambda x, y: sess.run(d, {u_in: x, v_in: y}), a, b, block)
  ref_r = np.partition(dist(ref, ref), k, axis=1)[:, k]
  smp_r = np.partition(dist(smp, smp), k, axis=1)[:, k]
  cross = dist(ref, smp)
  precision = (cross <= ref_r[:, None]).any(0).mean()
  recall = (cross <= smp_r[None, :]).any(1).mean()
  # One block's float16 distances and its float16 u.v, to check the rest of the model with TF's
  # own product.
  block16 = sess.run([d16, product16], {u_in: ref[:block], v_in: smp[:block]})
  return precision, recall, ref_r, smp_r, block16


@pytest.mark.parametrize("n_ref, n_smp, dims, block", [
    (300, 260, 2048, 10000),  # pool_3's width, one block.
    (220, 190, 2048, 96),     # Several blocks, ragged.
    (200, 170, 333, 64),      # A width that is no multiple of 8: row starts change phase.
])
def test_float16_adm_is_adms_precision_recall_on_cpu(n_ref, n_smp, dims, block):
  # pool_3-like features (non-negative, a few shared directions, float16 spacing of 0.5-1 at
  # the norms). Given TF's float16 u.v, the model's distances are TF's bit for bit (norms and
  # every rounding). u.v itself is a float32 sum rounded to float16, and TF's GEMM sums in an
  # order of its own: where the float32 sum lies at a float16 rounding midpoint the two pick
  # neighbouring float16 values (about 1e-4 of products), so a few radii may differ by one
  # float16 step; precision and recall are ADM's exactly.
  rng = np.random.default_rng(dims + n_ref)
  mix = rng.normal(size=(6, dims)) * 0.4

  def pool_like(n, shift):
    z = rng.normal(size=(n, 6)) + shift
    return np.maximum(z @ mix + 0.35 * rng.normal(size=(n, dims)) + 0.3, 0).astype(np.float32)

  ref, smp = pool_like(n_ref, 0.0), pool_like(n_smp, 0.5)
  precision, recall, ref_r, smp_r, (tf_d16, tf_product16) = _tensorflow_adm_precision_recall(
      ref, smp, block=block)
  assert 0.02 < precision < 0.98 and 0.02 < recall < 0.98  # Neither trivially 0 nor 1.
  norms = lambda x: fid.tf_cpu_half_row_sums(x.astype(np.float16) ** 2)
  model_d16 = np.maximum((norms(ref[:block])[:, None] - np.float16(2) * tf_product16)
                         + norms(smp[:block])[None, :], np.float16(0))
  np.testing.assert_array_equal(model_d16, tf_d16)
  for ours, want in ((fid.manifold_radii(ref, block=block), ref_r),
                     (fid.manifold_radii(smp, block=block), smp_r)):
    assert np.mean(ours == want) >= 0.98, np.mean(ours == want)
    # At most one float16 step of 2 u.v, which is below the largest norm.
    step = 2.0 * np.spacing(np.float16(max(norms(ref).max(), norms(smp).max())))
    assert np.abs(ours - want).max() <= step
  assert fid.precision_recall(ref, smp, block=block) == (precision, recall)
  assert (precision, recall) == _precision_recall_adm16(ref, smp, block=block)  # The model.


def test_precision_recall_rejects_an_unknown_distance_mode():
  x = np.zeros((5, 2), np.float32)
  with pytest.raises(ValueError, match=r"one of \('float16_adm', 'float32'\), got 'float64'"):
    fid.precision_recall(x, x, distances="float64")


def test_precision_recall_of_a_set_with_itself_is_one_and_disjoint_is_zero(model):
  pool, _, _ = fid.run_inception(_smooth_images(BATCH * 2, seed=5), model, BATCH)
  for distances in fid.PR_DISTANCES:
    assert fid.precision_recall(pool, pool, distances=distances) == (1.0, 1.0)
    assert fid.precision_recall(pool, pool + 1e3, distances=distances) == (0.0, 0.0)


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


def test_map_batches_logs_progress_with_rate_and_eta(caplog):
  images = np.zeros((13, 2), np.uint8)
  with caplog.at_level("INFO"):
    fid.map_batches(lambda b: (b,), images, batch_size=4, what="test images", log_every_s=0.0)
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("test images")]
  assert len(lines) == 4, lines  # After batches 1-3, then the final line.
  assert lines[0].startswith("test images: 4/13, ") and "images/s, ETA" in lines[0]
  assert lines[-1].startswith("test images: 13/13 done in ")


def test_inception_runs_data_parallel_over_fake_devices():
  # run_inception's plumbing (replicated weights, batches sharded over a 2-device 'data' mesh,
  # padding, outputs gathered in order) with a small stand-in network: the 95-layer Inception
  # itself would cost a minute of compile for a check of the same code path.
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "programs",
                        "inception_two_devices.py")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu", PYTHONPATH=os.getcwd())
  res = subprocess.run([sys.executable, script], env=env, capture_output=True, text=True,
                       timeout=120)
  assert res.returncode == 0 and "data parallel ok" in res.stdout, res.stderr[-2000:]
  assert "inception images: 7/7 done in" in res.stderr  # The progress line, on process 0.


# ----------------------------------------------------------------------------- file errors

@pytest.mark.parametrize("arrays, match", [
    ({"labels": np.zeros(3)}, r"neither statistics \(mu, sigma\) nor arr_0"),
    ({"mu": np.zeros(2048)}, r"'mu' without its pair"),
    ({"mu": np.zeros(2048), "sigma": np.eye(2048), "mu_s": np.zeros(2023)},
     r"'mu_s' without its pair"),
    ({"mu": np.zeros(5), "sigma": np.eye(5)}, r"mu has shape \(5,\), expected \(2048,\)"),
    ({"mu": np.zeros(4), "sigma": np.eye(3)}, r"are not \[d\] and \[d, d\]"),
])
def test_bad_reference_names_the_file(tmp_path, arrays, match):
  path = tmp_path / "bad_ref.npz"
  np.savez(path, **arrays)
  with pytest.raises(ValueError, match=r"bad_ref\.npz.*" + match):
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
    scoring.load_samples(str(path))


# ----------------------------------------------------------------------------- reference batches

def test_image_folder_reference(tmp_path, model):
  folder = tmp_path / "real"
  folder.mkdir()
  images = _smooth_images(BATCH + 1, seed=7)  # Not a whole batch: padding is dropped.
  for i, im in enumerate(images):
    Image.fromarray(im).save(folder / f"{i:03d}.png")
  np.testing.assert_array_equal(fid.load_images(str(folder)), images)
  ref = fid.compute_reference(str(folder), model, str(tmp_path / "ref.npz"), BATCH,
                              num_pr_images=3)
  with np.load(tmp_path / "ref.npz") as npz:  # ADM's keys, nothing else.
    assert sorted(npz.files) == ["arr_0", "mu", "mu_s", "sigma", "sigma_s"]
  loaded = fid.load_reference(str(tmp_path / "ref.npz"))
  assert loaded["images"].shape == (3, 32, 32, 3) and loaded["mu"].shape == (2048,)
  assert loaded["mu_s"].shape == (2023,) and loaded["sigma_s"].shape == (2023, 2023)
  np.testing.assert_allclose(loaded["sigma"], ref["sigma"])
  pool, spatial, _ = fid.run_inception(images, model, BATCH)
  np.testing.assert_allclose(loaded["mu"], pool.mean(axis=0), rtol=1e-6)
  np.testing.assert_allclose(loaded["mu_s"], spatial.mean(axis=0), rtol=1e-6, atol=1e-7)
  fid.compute_reference(images, model, str(tmp_path / "stats_only.npz"), BATCH, num_pr_images=0)
  assert "images" not in fid.load_reference(str(tmp_path / "stats_only.npz"))


def test_reference_with_only_images_gets_its_statistics_computed(tmp_path, model):
  weights = tmp_path / "inception_random.npz"
  inception.save_inception(model, str(weights))
  ref_images, samples = _smooth_images(BATCH * 2, seed=21), _smooth_images(BATCH + 1, seed=22)
  only_images = tmp_path / "ref_images_only.npz"
  np.savez(only_images, arr_0=ref_images)
  got = scoring.evaluate_inception(samples, None, str(only_images), str(weights), BATCH,
                                    is_split_size=2)
  # The same numbers from the reference's own activations, as ADM's evaluator computes them.
  ref_pool, ref_spatial, _ = fid.run_inception(ref_images, model, BATCH)
  pool, spatial, logits = fid.run_inception(samples, model, BATCH)
  assert got["fid"] == pytest.approx(
      fid.fid_from_features(pool, *fid.feature_statistics(ref_pool)), rel=1e-6)
  assert got["sfid"] == pytest.approx(
      fid.fid_from_features(spatial, *fid.feature_statistics(ref_spatial)), rel=1e-6)
  assert got["sfid"] > 0 and got["fid"] > 0
  assert got["inception_score"] == pytest.approx(fid.inception_score(logits, 2), rel=1e-6)
  assert (got["precision"], got["recall"]) == fid.precision_recall(ref_pool, pool)
  assert got["pr_distances"] == "float16_adm"


# ----------------------------------------------------------------------------- the CLIs

def _evaluate_flags():
  flags.FLAGS.mark_as_parsed()  # flagsaver sets the CLI's flags; nothing parses argv here.


def test_reference_and_evaluate_clis_end_to_end(tmp_path, model, capsys):
  weights = tmp_path / "inception_random.npz"
  inception.save_inception(model, str(weights))
  samples = tmp_path / "samples.npz"
  np.savez(samples, arr_0=_smooth_images(BATCH + 2, seed=11), arr_1=np.arange(BATCH + 2))
  real = tmp_path / "real.npz"
  np.savez(real, arr_0=_smooth_images(BATCH + 1, seed=12))
  ref = tmp_path / "ref.npz"
  # The reference CLI as a program (a subprocess); evaluate's main in-process, as the digits
  # test below runs it, so one Inception program serves both.
  res = subprocess.run(
      [sys.executable, "-m", "pra_jax.tools.reference", f"--images={real}",
       f"--inception={weights}", f"--out={ref}", f"--batch_size={BATCH}", "--num_pr_images=4"],
      env=dict(os.environ, JAX_PLATFORMS="cpu"), cwd=os.path.dirname(os.path.dirname(__file__)),
      capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-3000:]
  assert f"wrote {ref}: mu/sigma and mu_s/sigma_s of {BATCH + 1} images, 4 as arr_0" in res.stdout
  with np.load(ref) as npz:
    assert sorted(npz.files) == ["arr_0", "mu", "mu_s", "sigma", "sigma_s"]
    assert npz["arr_0"].shape == (4, 32, 32, 3) and npz["sigma_s"].shape == (2023, 2023)

  _evaluate_flags()
  with flagsaver.flagsaver(samples=str(samples), ref=str(ref), inception=str(weights),
                           metrics="inception", batch_size=BATCH, is_split_size=2,
                           pr_distances="float32"):
    evaluate.main(["evaluate"])
  out = json.loads((tmp_path / "samples.metrics.json").read_text())
  assert set(out) == {"fid", "sfid", "inception_score", "precision", "recall", "pr_distances",
                      "num_images", "inception_sha256"}
  assert out["num_images"] == BATCH + 2 and out["pr_distances"] == "float32"
  assert out["inception_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
  assert out["fid"] > 0 and out["sfid"] > 0 and out["inception_score"] >= 1.0
  assert 0.0 <= out["precision"] <= 1.0 and 0.0 <= out["recall"] <= 1.0
  assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == out
  # The reference the CLI wrote holds what the library computes from the same images.
  pool, spatial, _ = fid.run_inception(np.load(real)["arr_0"], model, BATCH)
  with np.load(ref) as npz:
    np.testing.assert_allclose(npz["mu"], pool.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(npz["sigma_s"], np.cov(spatial.astype(np.float64), rowvar=False),
                               rtol=1e-4, atol=1e-6)


def test_evaluate_cli_digits_branch(tmp_path, monkeypatch):
  monkeypatch.delenv(scoring.JUDGE_CACHE_ENV, raising=False)
  calls = []

  def evaluate_digits(images, labels, cache_dir):
    calls.append((images.shape, labels.tolist(), cache_dir))
    return {"probe_accuracy": np.float32(0.75), "num_images": 2}

  monkeypatch.setitem(sys.modules, "pra_jax.metrics.digits",
                      types.SimpleNamespace(evaluate_digits=evaluate_digits))
  samples = tmp_path / "digits.npz"
  np.savez(samples, arr_0=np.zeros((2, 16, 16, 1), np.uint8), arr_1=np.array([3, 4]))
  _evaluate_flags()
  with flagsaver.flagsaver(samples=str(samples), metrics="digits", image_size=16):
    evaluate.main(["evaluate"])
  # The judge's cache: the run's eval_cache beside (or above) the samples, as training fills it
  # (the tests share one judge folder through the environment: unset here) ...
  assert calls == [((2, 16, 16, 1), [3, 4], str(tmp_path / "eval_cache"))]
  # ... or $PRA_JAX_JUDGE_CACHE, one folder for every run's judges.
  monkeypatch.setenv(scoring.JUDGE_CACHE_ENV, str(tmp_path / "shared"))
  with flagsaver.flagsaver(samples=str(samples), metrics="digits", image_size=16):
    evaluate.main(["evaluate"])
  assert calls[-1][2] == str(tmp_path / "shared")
  out = json.loads((tmp_path / "digits.metrics.json").read_text())
  assert out == {"probe_accuracy": 0.75, "num_images": 2}
