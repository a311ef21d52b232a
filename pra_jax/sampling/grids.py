"""Sample grids: images tiled one row per class, written as PNG (and, during training, to the
dashboard)."""

import os

import jax
import numpy as np
from absl import logging
from PIL import Image

from pra_jax import files, rng
from pra_jax.sampling import data_parallel


def image_grid(images_BHWC: np.ndarray, rows: int) -> np.ndarray:
  """Tiles B images into `rows` rows (B must divide evenly), with a 1-pixel gap."""
  b, h, w, c = images_BHWC.shape
  cols = -(-b // rows)
  grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
  for i, im in enumerate(images_BHWC):
    r, col = divmod(i, cols)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = im
  return grid


def save_png(grid_HWC: np.ndarray, path: str, scale: int = 1) -> None:
  img = Image.fromarray(grid_HWC[..., 0] if grid_HWC.shape[-1] == 1 else grid_HWC)
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  files.save_png(img, path)


def class_rows(classes, per_class: int) -> np.ndarray:
  """Labels for a grid with one row per class."""
  return np.repeat(np.asarray(classes, np.int32), per_class)


def write_grid(generator, config, workdir: str, step: int, writer=None, per_class: int = 10,
               check_stop=None) -> str:
  """During training: a sample grid (one row per class, the weights `generator` holds) to
  TensorBoard and workdir/samples/step_N.png, written by process 0. Every process calls it: all
  take part in every batch (data_parallel.generate_all)."""
  classes = list(range(min(config.data.num_classes, 10)))
  labels = class_rows(classes, per_class)
  images = data_parallel.generate_all(generator, labels, rng.stream(config.seed, "grid"),
                                      check_stop)
  grid = image_grid(images, rows=len(classes))
  path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_png(grid, path, scale=2)
    if writer is not None:
      writer.write_images(step, {"samples": grid[None]})
    logging.info("Sample grid of step %d written to %s.", step, path)
  return path
