"""The digits judge (class DigitsClassifier), a small CNN: the digits demo's class accuracy and a
Frechet distance on its features.

Trained once per image size on the fixed 'train' split, cached as an .npz, scored on the
digits set's held-out split ('eval').
"""

import functools
import os
import warnings
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from flax import traverse_util

from pra_jax import batching, files
from pra_jax.data import DIGITS_NUM_CLASSES, load_digits_split
from pra_jax.metrics.fid import feature_statistics, frechet_distance

# Bump whenever the architecture, preprocessing or training recipe changes: the tag is part of
# the cache file name, so stale weights are never loaded into a different network.
CACHE_VERSION = 1
# Every input size is resampled to this grid first, so one architecture (and one training
# cost) serves 8x8 up to 64x64 and beyond; the scans themselves only hold 8x8 of detail.
_INTERNAL_SIZE = 16
FEATURE_DIM = 64
_EVAL_BATCH = 512


def _resample(x_BHW1: jax.Array) -> jax.Array:
  """Brings [B, S, S, 1] to the internal 16x16 grid."""
  b, s = x_BHW1.shape[0], x_BHW1.shape[1]
  if s == _INTERNAL_SIZE:
    return x_BHW1
  if s % _INTERNAL_SIZE == 0:
    # Exact area averaging for the common power-of-two sizes; also far quicker to compile.
    f = s // _INTERNAL_SIZE
    return x_BHW1.reshape(b, _INTERNAL_SIZE, f, _INTERNAL_SIZE, f, 1).mean(axis=(2, 4))
  return jax.image.resize(x_BHW1, (b, _INTERNAL_SIZE, _INTERNAL_SIZE, 1), "linear",
                          antialias=True)


class DigitsClassifier(nnx.Module):
  """Two conv blocks and a 64-wide hidden layer (the features) over a 16x16 resampled input."""

  def __init__(self, image_size: int, *, rngs: nnx.Rngs):
    self.image_size = image_size
    self.conv1 = nnx.Conv(1, 16, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(16, 32, (3, 3), rngs=rngs)
    flat = (_INTERNAL_SIZE // 4) ** 2 * 32
    self.hidden = nnx.Linear(flat, FEATURE_DIM, rngs=rngs)
    self.head = nnx.Linear(FEATURE_DIM, DIGITS_NUM_CLASSES, rngs=rngs)

  def features(self, x_BHW1: jax.Array) -> jax.Array:
    """Penultimate features [B, FEATURE_DIM] of images already mapped to [-1, 1]."""
    b = x_BHW1.shape[0]
    x = nnx.avg_pool(nnx.relu(self.conv1(_resample(x_BHW1))), (2, 2), strides=(2, 2))
    x = nnx.avg_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
    # GELU, not ReLU: dead units would leave the feature covariance singular and make the
    # Frechet distance ill-conditioned.
    return nnx.gelu(self.hidden(x.reshape(b, -1)))

  def __call__(self, x_BHW1: jax.Array) -> jax.Array:
    return self.head(self.features(x_BHW1))


def to_unit_range(images: np.ndarray | jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [-1, 1], the same mapping the generator uses."""
  return jnp.asarray(images, jnp.float32) / 127.5 - 1.0


# ----------------------------------------------------------------------------- training

def _shift(x_BHW1: jax.Array, offsets_B2: jax.Array, max_shift: int) -> jax.Array:
  """Shifts image b by offsets_B2[b] - max_shift pixels per axis, filling with background (-1)."""
  s = x_BHW1.shape[1]
  pad = ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0))
  padded = jnp.pad(x_BHW1, pad, constant_values=-1.0)
  crop = lambda im, off: jax.lax.dynamic_slice(im, (off[0], off[1], 0), (s, s, 1))
  return jax.vmap(crop)(padded, offsets_B2)


def train_step(model: DigitsClassifier, optimizer: nnx.Optimizer, x_BHW1, labels_B, offsets_B2,
               max_shift: int) -> jax.Array:
  """One Adam step on shift-augmented images; returns the mean cross-entropy."""
  x_BHW1 = _shift(x_BHW1, offsets_B2, max_shift)

  def loss_fn(model):
    logits = model(x_BHW1)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels_B).mean()

  loss, grads = nnx.value_and_grad(loss_fn)(model)
  optimizer.update(model, grads)
  return loss


@functools.partial(jax.jit, static_argnums=(0, 6), donate_argnums=(1,))
def _train_step_jit(graphdef, state, images_XHW1, labels_X, idx_B, offsets_B2, max_shift: int):
  """train_step over (graphdef, state): the graph is traversed once, outside the loop."""
  model, optimizer = nnx.merge(graphdef, state)
  loss = train_step(model, optimizer, to_unit_range(images_XHW1[idx_B]), labels_X[idx_B],
                    offsets_B2, max_shift)
  return nnx.state((model, optimizer)), loss


@functools.lru_cache(maxsize=None)
def _adam(learning_rate: float, num_steps: int) -> optax.GradientTransformation:
  # One object per recipe: the optimizer is part of the graphdef, so a fresh one per call
  # would recompile the train step on every retrain.
  return optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps))


@functools.partial(nnx.jit, static_argnums=(0, 2))
def _create(image_size: int, seed, tx) -> tuple[DigitsClassifier, nnx.Optimizer]:
  # Under jit because eagerly each initialiser compiles on its own; an RBG key because XLA's
  # own bit generator compiles in about half the time of threefry on CPU.
  model = DigitsClassifier(image_size, rngs=nnx.Rngs(jax.random.key(seed, impl="rbg")))
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def train_classifier(image_size: int, seed: int = 0, num_epochs: int = 20,
                     batch_size: int = 100, learning_rate: float = 3e-3) -> DigitsClassifier:
  """Trains a fresh judge on the 'train' split; deterministic given the seed."""
  images, labels = load_digits_split("train", image_size)
  steps_per_epoch = len(labels) // batch_size
  tx = _adam(learning_rate, num_epochs * steps_per_epoch)
  graphdef, state = nnx.split(_create(image_size, np.uint32(seed), tx))
  # About one 16th of the image: small enough to keep the digit whole, large enough that a
  # generator's slightly off-centre digit is still read correctly.
  max_shift = max(1, round(image_size / 16))
  # Batches and shifts are drawn on the host from one seeded generator: the run is a pure
  # function of the seed, and the compiled step holds no random-number code (slow to compile).
  rng = np.random.default_rng(seed)
  images, labels = jnp.asarray(images), jnp.asarray(labels)
  for _ in range(num_epochs):
    perm = rng.permutation(len(labels)).astype(np.int32)
    for i in range(steps_per_epoch):
      offsets = rng.integers(0, 2 * max_shift + 1, (batch_size, 2), dtype=np.int32)
      state, _ = _train_step_jit(graphdef, state, images, labels,
                                 perm[i * batch_size:(i + 1) * batch_size], offsets, max_shift)
  model, _ = nnx.merge(graphdef, state)
  return model


# ----------------------------------------------------------------------------- cache

def cache_path(cache_dir: str, image_size: int, seed: int = 0) -> str:
  return os.path.join(cache_dir, f"digits_classifier_v{CACHE_VERSION}_s{image_size}_seed{seed}.npz")


def save_params(model: DigitsClassifier, path: str) -> None:
  """Writes the params to a temp file in the same folder, then renames: readers never see half."""
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep="/").items()}
  files.atomic_write(path, lambda f: np.savez(f, **flat))


def load_params(path: str, make_model):
  """Params written by save_params, loaded into make_model()'s structure (the judges share it);
  ValueError if they do not fit exactly."""
  # Shapes only: the stored values replace every leaf, so nothing needs initialising.
  graphdef, state = nnx.split(nnx.eval_shape(make_model))
  expected = traverse_util.flatten_dict(nnx.to_pure_dict(state), sep="/")
  with np.load(path, allow_pickle=False) as npz:
    stored = {k: npz[k] for k in npz.files}
  if set(stored) != set(expected):
    raise ValueError(f"cache holds {sorted(stored)}, expected {sorted(expected)}")
  for k, v in expected.items():
    if stored[k].shape != v.shape or stored[k].dtype != v.dtype:
      raise ValueError(f"cache entry {k} is {stored[k].dtype}{stored[k].shape}, "
                       f"expected {v.dtype}{v.shape}")
    if not np.isfinite(stored[k]).all():
      raise ValueError(f"cache entry {k} holds non-finite values")
  nested = traverse_util.unflatten_dict({k: jnp.asarray(v) for k, v in stored.items()}, sep="/")
  nnx.replace_by_pure_dict(state, nested)
  return nnx.merge(graphdef, state)


def cached_classifier(path: str, make_model, train, what: str):
  """The judge stored at `path` (loaded into make_model()'s structure) if the cache is good;
  else train(), cache it and return it (a bad file warns)."""
  if os.path.exists(path):
    try:
      return load_params(path, make_model)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
      warnings.warn(f"{what} judge cache {path} is unreadable ({e}); retraining",
                    RuntimeWarning, stacklevel=3)
  model = train()
  save_params(model, path)
  return model


def load_or_train_classifier(image_size: int, cache_dir: str, seed: int = 0) -> DigitsClassifier:
  """The cached judge for image_size; trains and caches it on first use or a bad file."""
  return cached_classifier(cache_path(cache_dir, image_size, seed),
                           lambda: DigitsClassifier(image_size, rngs=nnx.Rngs(0)),
                           lambda: train_classifier(image_size, seed), "digits")


# ----------------------------------------------------------------------------- scoring

@jax.jit
def _forward(graphdef, state, images_BHWC):
  model = nnx.merge(graphdef, state)
  feats = model.features(to_unit_range(images_BHWC))
  return model.head(feats), feats


def judge_outputs(model, images_XHWC: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(logits, features) of either judge (its `features` and `head`) as float32 numpy, in
  fixed-size batches: every call reuses one compiled shape."""
  graphdef, state = nnx.split(model)
  return batching.map_rows(lambda _, images_B: _forward(graphdef, state, images_B), _EVAL_BATCH,
                           np.asarray(images_XHWC))


def classifier_outputs(model: DigitsClassifier,
                       images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(logits [n, 10], features [n, FEATURE_DIM]) as float32 numpy, in fixed-size batches."""
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[1:] != (model.image_size, model.image_size, 1):
    raise ValueError(f"the judge reads [n, {model.image_size}, {model.image_size}, 1] images, "
                     f"got shape {images.shape}")
  return judge_outputs(model, images)


def classifier_features(model: DigitsClassifier, images: np.ndarray) -> np.ndarray:
  """Penultimate features [n, FEATURE_DIM] of uint8 images [n, S, S, 1]."""
  return classifier_outputs(model, images)[1]


def predict(model: DigitsClassifier, images: np.ndarray) -> np.ndarray:
  """Predicted class (int32 [n]) of uint8 images [n, S, S, 1]."""
  return classifier_outputs(model, images)[0].argmax(axis=-1).astype(np.int32)


def _validate(images, labels, image_size: int | None) -> tuple[np.ndarray, np.ndarray, int]:
  """Checks the samples against what the judge reads; returns them as numpy arrays."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    raise ValueError(f"images must be uint8 in [0, 255], got dtype {images.dtype}")
  if images.ndim != 4:
    raise ValueError(f"images must be NHWC [n, S, S, 1], got shape {images.shape}")
  n, h, w, c = images.shape
  if c != 1:
    raise ValueError(f"images must have 1 channel (grayscale digits), got {c} in {images.shape}")
  if h != w or h < 8:
    raise ValueError(f"images must be square with side >= 8, got {h}x{w}")
  if image_size is not None and h != image_size:
    raise ValueError(f"images are {h}x{w} but the digits judge is for image_size {image_size}")
  if n < 2:
    raise ValueError(f"need at least 2 images for feature statistics, got {n}")
  labels = np.asarray(labels)
  if labels.ndim != 1 or len(labels) != n:
    raise ValueError(f"labels must be [n={n}] to match the images, got shape {labels.shape}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
  if labels.min() < 0 or labels.max() >= DIGITS_NUM_CLASSES:
    raise ValueError(f"labels must lie in 0..{DIGITS_NUM_CLASSES - 1}, "
                     f"got range {labels.min()}..{labels.max()}")
  return images, labels, h


def evaluate_digits(images, labels, cache_dir: str, image_size: int | None = None,
                    seed: int = 0) -> dict[str, float]:
  """Scores generated digits (uint8 [n, S, S, 1], requested labels [n]) against 'eval'.

  digits_fd compares the judge's features of the samples with those of the real held-out
  digits; digits_classifier_eval_accuracy (the judge's own accuracy on them) says how far the
  judge itself can be trusted.
  """
  images, labels, size = _validate(images, labels, image_size)
  model = load_or_train_classifier(size, cache_dir, seed)
  real_images, real_labels = load_digits_split("eval", size)
  real_logits, real_feats = classifier_outputs(model, real_images)
  logits, feats = classifier_outputs(model, images)
  fd = frechet_distance(*feature_statistics(feats), *feature_statistics(real_feats))
  # A distance cannot be negative; identical sets land at -1e-12 by rounding.
  fd = max(fd, 0.0)
  return {
      "digits_accuracy": float((logits.argmax(-1) == labels).mean()),
      "digits_fd": fd,
      "digits_num_images": float(len(images)),
      "digits_classifier_eval_accuracy": float((real_logits.argmax(-1) == real_labels).mean()),
  }
