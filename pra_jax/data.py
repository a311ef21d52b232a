"""Input pipelines: the built-in digits demo set, image folders and TFDS, all through grain.

Every source yields uint8 images in NHWC and int32 labels; the model maps pixels to [-1, 1].
"""

import numpy as np
from PIL import Image

# The digits demo set (scikit-learn's 1797 real 8x8 scans, 10 classes) is split once, by a
# fixed permutation, so every run and every metric sees the same held-out images.
DIGITS_NUM_CLASSES = 10
DIGITS_NUM_EVAL = 297
_DIGITS_SPLIT_SEED = 0


def load_digits_split(split: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 [n, image_size, image_size, 1], labels int32 [n]) of a split."""
  from sklearn.datasets import load_digits  # Imported lazily: only the demo needs it.

  if split not in ("train", "eval"):
    raise ValueError(f"digits split must be 'train' or 'eval', got {split!r}")
  if image_size < 8:
    raise ValueError(f"digits image_size must be at least 8 (the scans are 8x8), got {image_size}")
  digits = load_digits()
  order = np.random.default_rng(_DIGITS_SPLIT_SEED).permutation(len(digits.target))
  idx = order[DIGITS_NUM_EVAL:] if split == "train" else order[:DIGITS_NUM_EVAL]
  # Scans hold 0..16 ink levels; scale to 0..255 and upsample bilinearly to the demo size.
  small = np.round(digits.images[idx] * (255.0 / 16.0)).astype(np.uint8)
  images = np.stack([
      np.asarray(Image.fromarray(im).resize((image_size, image_size), Image.BILINEAR))
      for im in small
  ])
  return images[..., None], digits.target[idx].astype(np.int32)
