"""The photos judge (class PhotosClassifier), a small CNN for the photos proving ground: which
photo a crop comes from, and a Frechet distance in its features.

Trained once per crop size on the real training crops (random flips and small shifts), cached as
an .npz; its accuracy is measured on the held-out crops (the bottom fifth of every photo, never
seen in training). Every score carries that accuracy (how far the judge can be trusted) and the
number of samples the distance was computed from (a Frechet distance is biased upwards at small
counts, so distances compare only at equal counts).

The distance is to the training crops, as FID on ImageNet is to the training set: a generator
learns the training distribution, and the held-out band of each photo is a different part of the
scene (the 284 real held-out crops sit at FD 271 from the training crops at 32px, a shift,
not a quality floor).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pra_jax.data import PHOTOS_NUM_CLASSES, load_photos_split
from pra_jax.metrics.digits import cached_classifier, judge_outputs, to_unit_range
from pra_jax.metrics.fid import feature_statistics, frechet_distance

# Bump whenever the architecture, preprocessing or training recipe changes (part of the file name).
CACHE_VERSION = 1
FEATURE_DIM = 64


class PhotosClassifier(nnx.Module):
  """Three conv blocks (32, 64, 64 channels, each halving the grid) and a 64-wide hidden layer."""

  def __init__(self, image_size: int, *, rngs: nnx.Rngs):
    if image_size % 8:
      raise ValueError(f"the photos judge reads crops whose side is a multiple of 8, got "
                       f"{image_size}")
    self.image_size = image_size
    self.conv1 = nnx.Conv(3, 32, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, (3, 3), rngs=rngs)
    self.conv3 = nnx.Conv(64, 64, (3, 3), rngs=rngs)
    self.hidden = nnx.Linear((image_size // 8) ** 2 * 64, FEATURE_DIM, rngs=rngs)
    self.head = nnx.Linear(FEATURE_DIM, PHOTOS_NUM_CLASSES, rngs=rngs)

  def features(self, x_BHW3: jax.Array) -> jax.Array:
    """Penultimate features [B, FEATURE_DIM] of crops already mapped to [-1, 1]."""
    x = x_BHW3
    for conv in (self.conv1, self.conv2, self.conv3):
      x = nnx.avg_pool(nnx.relu(conv(x)), (2, 2), strides=(2, 2))
    # GELU, not ReLU: dead units would leave the feature covariance singular.
    return nnx.gelu(self.hidden(x.reshape(x.shape[0], -1)))

  def __call__(self, x_BHW3: jax.Array) -> jax.Array:
    return self.head(self.features(x_BHW3))


# ----------------------------------------------------------------------------- training

def _augment(x_BHW3, flips_B, offsets_B2, max_shift: int):
  """Mirrors the flagged crops and shifts each by offsets - max_shift pixels (edge-replicated)."""
  s = x_BHW3.shape[1]
  x = jnp.where(flips_B[:, None, None, None], x_BHW3[:, :, ::-1], x_BHW3)
  padded = jnp.pad(x, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)),
                   mode="edge")
  crop = lambda im, off: jax.lax.dynamic_slice(im, (off[0], off[1], 0), (s, s, 3))
  return jax.vmap(crop)(padded, offsets_B2)


@functools.partial(jax.jit, static_argnums=(0, 7), donate_argnums=(1,))
def _train_step(graphdef, state, images_XHW3, labels_X, idx_B, flips_B, offsets_B2, max_shift):
  model, optimizer = nnx.merge(graphdef, state)
  x = _augment(to_unit_range(images_XHW3[idx_B]), flips_B, offsets_B2, max_shift)

  def loss_fn(model):
    return optax.softmax_cross_entropy_with_integer_labels(model(x), labels_X[idx_B]).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return nnx.state((model, optimizer)), loss


@functools.lru_cache(maxsize=None)
def _adam(learning_rate: float, num_steps: int) -> optax.GradientTransformation:
  return optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps))


@functools.partial(nnx.jit, static_argnums=(0, 2))
def _create(image_size: int, seed, tx):
  model = PhotosClassifier(image_size, rngs=nnx.Rngs(jax.random.key(seed, impl="rbg")))
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def train_classifier(image_size: int, seed: int = 0, num_epochs: int = 8, batch_size: int = 128,
                     learning_rate: float = 2e-3) -> PhotosClassifier:
  """Trains a fresh judge on the training crops; deterministic given the seed."""
  images, labels = load_photos_split("train", image_size)
  steps_per_epoch = len(labels) // batch_size
  tx = _adam(learning_rate, num_epochs * steps_per_epoch)
  graphdef, state = nnx.split(_create(image_size, np.uint32(seed), tx))
  max_shift = max(1, image_size // 16)
  rng = np.random.default_rng(seed)  # Batches, flips and shifts drawn on the host.
  images, labels = jnp.asarray(images), jnp.asarray(labels)
  for _ in range(num_epochs):
    perm = rng.permutation(len(labels)).astype(np.int32)
    for i in range(steps_per_epoch):
      flips = rng.random(batch_size) < 0.5
      offsets = rng.integers(0, 2 * max_shift + 1, (batch_size, 2), dtype=np.int32)
      state, _ = _train_step(graphdef, state, images, labels,
                             perm[i * batch_size:(i + 1) * batch_size], flips, offsets, max_shift)
  model, _ = nnx.merge(graphdef, state)
  return model


# ----------------------------------------------------------------------------- cache

def cache_path(cache_dir: str, image_size: int, seed: int = 0) -> str:
  return os.path.join(cache_dir, f"photos_classifier_v{CACHE_VERSION}_s{image_size}_seed{seed}.npz")


def load_or_train_classifier(image_size: int, cache_dir: str, seed: int = 0) -> PhotosClassifier:
  """The cached judge for image_size; trains and caches it on first use or a bad file."""
  return cached_classifier(cache_path(cache_dir, image_size, seed),
                           lambda: PhotosClassifier(image_size, rngs=nnx.Rngs(0)),
                           lambda: train_classifier(image_size, seed), "photos")


# ----------------------------------------------------------------------------- scoring

def classifier_outputs(model: PhotosClassifier, images) -> tuple[np.ndarray, np.ndarray]:
  """(logits [n, 10], features [n, FEATURE_DIM]) as float32 numpy, in fixed-size batches."""
  return judge_outputs(model, images)


def _validate(images, labels) -> tuple[np.ndarray, np.ndarray]:
  images, labels = np.asarray(images), np.asarray(labels)
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"photos judge reads uint8 RGB crops [n, S, S, 3], got {images.dtype} "
                     f"shape {images.shape}")
  if images.shape[1] != images.shape[2]:
    raise ValueError(f"crops must be square, got {images.shape[1]}x{images.shape[2]}")
  if len(images) < 2:
    raise ValueError(f"need at least 2 images for feature statistics, got {len(images)}")
  if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers [n={len(images)}], got {labels.dtype} "
                     f"shape {labels.shape}")
  if labels.min() < 0 or labels.max() >= PHOTOS_NUM_CLASSES:
    raise ValueError(f"labels must lie in 0..{PHOTOS_NUM_CLASSES - 1}, got "
                     f"{labels.min()}..{labels.max()}")
  return images, labels


def evaluate_photos(images, labels, cache_dir: str, seed: int = 0) -> dict[str, float]:
  """Scores generated crops (uint8 [n, S, S, 3], requested labels [n]).

  photos_accuracy: the judge names the requested photo; photos_fd: Frechet distance between the
  judge's features of the samples (photos_fd_num_images of them) and of all training crops;
  photos_classifier_eval_accuracy: the judge's own accuracy on the held-out crops.
  """
  images, labels = _validate(images, labels)
  size = images.shape[1]
  model = load_or_train_classifier(size, cache_dir, seed)
  held_images, held_labels = load_photos_split("eval", size)
  held_logits, _ = classifier_outputs(model, held_images)
  _, train_feats = classifier_outputs(model, load_photos_split("train", size)[0])
  logits, feats = classifier_outputs(model, images)
  fd = max(frechet_distance(*feature_statistics(feats), *feature_statistics(train_feats)), 0.0)
  return {
      "photos_accuracy": float((logits.argmax(-1) == labels).mean()),
      "photos_fd": fd,
      "photos_fd_num_images": float(len(images)),
      "photos_classifier_eval_accuracy": float((held_logits.argmax(-1) == held_labels).mean()),
  }


def format_scores(scores: dict) -> str:
  """One line that never shows a score without the judge's accuracy and the sample count."""
  return (f"photos accuracy {scores['photos_accuracy']:.3f}, FD {scores['photos_fd']:.2f} "
          f"({int(scores['photos_fd_num_images'])} samples) [judge held-out accuracy "
          f"{scores['photos_classifier_eval_accuracy']:.3f}]")
