"""Peak host memory of a reference batch streamed from records (pra_jax.tools.reference --config):
N synthetic 256-px held-out images through the reference tool's own pieces (the eval iterator,
metrics/streamed_reference.write_reference, 10k arr_0 written as they pass), then the peak RSS.

  python benchmarks/reference_memory.py --num_images=50000 [--inception=random] [--batch_size=200]

By default the Inception network is replaced by a fixed random projection of 8x8 average-pooled
pixels to the real feature widths (2048 pool, 2023 spatial): a CPU streams 50,000 images in
minutes, and what is measured is everything that could grow with the image count. Inception's
own activations are per batch, whatever N: --inception=random runs the real network (random
weights) to measure them, at a few hundred images on a CPU.
"""

import os
import resource
import sys
import tempfile
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import pra_s  # noqa: E402
from pra_jax import data  # noqa: E402
from pra_jax.metrics import inception, streamed_reference  # noqa: E402

_NUM_IMAGES = flags.DEFINE_integer("num_images", 50000, "Held-out images streamed.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 200, "The reference tool's default batch.")
_NUM_PR_IMAGES = flags.DEFINE_integer("num_pr_images", 10000, "arr_0 images (ADM: 10k).")
_INCEPTION = flags.DEFINE_string("inception", "", "'random': the real network, random weights.")


def _projection():
  import numpy as np
  rng = np.random.default_rng(0)
  pool = rng.normal(size=(192, inception.NUM_FEATURES)).astype(np.float32)
  spatial = rng.normal(size=(192, inception.NUM_SPATIAL)).astype(np.float32)

  def features(images_BHWC):
    b, h, w, c = images_BHWC.shape
    small = images_BHWC.reshape(b, 8, h // 8, 8, w // 8, c).mean(axis=(2, 4)).reshape(b, -1)
    return small @ pool, small @ spatial

  return features


def main(argv):
  del argv
  config = pra_s.get_config()
  config.data.source = "synthetic"
  config.data.synthetic_examples = 10 * _NUM_IMAGES.value   # The eval split is a tenth.
  n = len(data.make_source(config.data, config.data.eval_split))
  if _INCEPTION.value == "random":
    features = streamed_reference.inception_features(inception.random_inception(0),
                                                   _BATCH_SIZE.value)
  else:
    features = _projection()
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "ref.npz")
    iterator = data.make_eval_iterator(config.data, local_batch_size=_BATCH_SIZE.value,
                                       process_index=0, process_count=1)
    ref = streamed_reference.write_reference((b["image"] for b in iterator), n, features, out,
                                           _NUM_PR_IMAGES.value)
    iterator.close()
    size = os.path.getsize(out)
  peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  print(f"reference_memory | {n} images of {config.data.image_size} px, batch "
        f"{_BATCH_SIZE.value}, {ref['num_pr_images']} as arr_0 ({size / 2**30:.2f} GiB file), "
        f"features {'Inception (random weights)' if _INCEPTION.value else 'stand-in projection'}"
        f" | peak RSS {peak_gib:.2f} GiB | {time.perf_counter() - start:.0f} s", flush=True)


if __name__ == "__main__":
  app.run(main)
