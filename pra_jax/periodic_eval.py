"""Quality metrics of the EMA model during training, written to the CLU dashboard.

Digits and photos runs use their judge (no files needed); other runs compute FID/IS against the
reference batch in config.eval when its files are given.
"""

import os

import jax
import numpy as np
from absl import logging

from pra_jax import rng
from pra_jax.metrics import scoring
from pra_jax.sampling import data_parallel


def balanced_labels(num_images: int, num_classes: int) -> np.ndarray:
  return (np.arange(num_images) % num_classes).astype(np.int32)


def evaluate_samples(images: np.ndarray, labels: np.ndarray, config, cache_dir: str) -> dict:
  """Metrics of generated uint8 images for their requested labels."""
  if config.data.source == "digits":
    from pra_jax.metrics import digits
    return digits.evaluate_digits(images, labels, cache_dir)
  if config.data.source == "photos":
    from pra_jax.metrics import photos
    return photos.evaluate_photos(images, labels, cache_dir)
  if config.eval.inception_path and config.eval.ref_path:
    return scoring.evaluate_inception(images, labels, config.eval.ref_path,
                                      config.eval.inception_path, config.eval.batch_size)
  logging.warning("train.eval_every is set but config.eval.inception_path / ref_path are not: "
                  "no periodic evaluation.")
  return {}


def evaluate_model(generator, config, workdir: str, step: int, writer=None,
                   check_stop=None) -> dict:
  """Samples config.eval.num_images images (classes balanced) from the weights `generator` holds,
  on every device of every process (all processes call it), and scores them on process 0; the
  others return {}."""
  labels = balanced_labels(config.eval.num_images, config.data.num_classes)
  logging.info("Evaluation at step %d: sampling %d images ...", step, len(labels))
  images = data_parallel.generate_all(generator, labels, rng.stream(config.seed, "eval"),
                                      check_stop)
  if jax.process_index() != 0:
    return {}
  metrics = evaluate_samples(images, labels, config,
                             scoring.judge_cache_dir(os.path.join(workdir, "eval_cache")))
  metrics = {f"eval/{k}": float(v) for k, v in metrics.items() if not isinstance(v, str)}
  if writer is not None and metrics:
    writer.write_scalars(step, metrics)
  logging.info("Evaluation at step %d: %s", step, metrics)
  return metrics
