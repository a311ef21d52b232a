"""Precision/recall at ADM's size: pra_jax's float16_adm against ADM's distance graph run by
TensorFlow (tf.compat.v1, CPU), on the same random pool_3-like features.

  nice -n 10 .venv/bin/python benchmarks/bench_precision_recall.py --n=10000 --dims=2048

Prints seconds for each, whether precision and recall agree, and the share of bit-equal radii.
"""

import argparse
import time

import numpy as np

from pra_jax.metrics import fid


def tensorflow_precision_recall(ref, smp, k=3, block=10000):
  """ADM's evaluator's distance block and k-NN steps, as a TF1 graph (written for pra_jax)."""
  import tensorflow as tf
  v1 = tf.compat.v1
  graph = tf.Graph()
  with graph.as_default():
    u_in, v_in = v1.placeholder(tf.float32, [None, None]), v1.placeholder(tf.float32, [None, None])

    def distances(u, v):
      nu = tf.reshape(tf.reduce_sum(tf.square(u), 1), [-1, 1])
      nv = tf.reshape(tf.reduce_sum(tf.square(v), 1), [1, -1])
      return tf.maximum(nu - 2 * tf.matmul(u, v, False, True) + nv, 0.0)

    d16 = distances(tf.cast(u_in, tf.float16), tf.cast(v_in, tf.float16))
    d = tf.cond(tf.reduce_all(tf.math.is_finite(d16)), lambda: tf.cast(d16, tf.float32),
                lambda: distances(u_in, v_in))
  sess = v1.Session(graph=graph)
  run = lambda a, b: np.concatenate([np.concatenate(
      [sess.run(d, {u_in: a[i:i + block], v_in: b[j:j + block]}) for j in range(0, len(b), block)],
      axis=1) for i in range(0, len(a), block)], axis=0)
  ref_r = np.partition(run(ref, ref), k, axis=1)[:, k]
  smp_r = np.partition(run(smp, smp), k, axis=1)[:, k]
  cross = run(ref, smp)
  return (cross <= ref_r[:, None]).any(0).mean(), (cross <= smp_r[None, :]).any(1).mean(), ref_r, smp_r


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--n", type=int, default=10000)
  parser.add_argument("--dims", type=int, default=2048)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  mix = rng.normal(size=(6, args.dims)) * 0.4
  pool_like = lambda shift: np.maximum(
      (rng.normal(size=(args.n, 6)) + shift) @ mix + 0.35 * rng.normal(size=(args.n, args.dims))
      + 0.3, 0).astype(np.float32)
  ref, smp = pool_like(0.0), pool_like(0.5)

  start = time.time()
  tf_p, tf_r, tf_ref_r, tf_smp_r = tensorflow_precision_recall(ref, smp)
  tf_s = time.time() - start
  start = time.time()
  ours = fid.precision_recall(ref, smp)
  ours_s = time.time() - start
  # Radii for the bit-equality count (not timed: precision_recall computed them inside).
  ref_r, smp_r = fid.manifold_radii(ref), fid.manifold_radii(smp)
  print(f"n={args.n} dims={args.dims}")
  print(f"tensorflow (ADM's graph): {tf_s:.1f} s, precision {tf_p:.6f} recall {tf_r:.6f}")
  print(f"pra_jax float16_adm:      {ours_s:.1f} s, precision {ours[0]:.6f} recall {ours[1]:.6f}")
  print(f"precision/recall equal: {ours == (tf_p, tf_r)}; radii bit-equal: "
        f"ref {np.mean(ref_r == tf_ref_r):.5f}, samples {np.mean(smp_r == tf_smp_r):.5f}")


if __name__ == "__main__":
  main()
