"""Raster-order patches and the pixel scale the model works in.

Dimension legend (pra_jax's table): B batch, H/W image height/width, C channels, p patch side,
N patches (H/p * W/p, row-major), P = p * p * C pixels per patch.
"""

import jax.numpy as jnp


def check_patchable(height: int, width: int, patch_size: int) -> tuple[int, int]:
  """Returns the patch grid (rows, cols), or says which size the patch does not divide."""
  if patch_size < 1:
    raise ValueError(f"patch_size must be >= 1, got {patch_size}")
  for name, size in (("height", height), ("width", width)):
    if size % patch_size:
      raise ValueError(f"image {name} {size} is not divisible by patch_size {patch_size}")
  return height // patch_size, width // patch_size


def patchify(images_BHWC, patch_size: int):
  """[B, H, W, C] -> [B, N, P], patches in raster order, each flattened (row, col, channel)."""
  if images_BHWC.ndim != 4:
    raise ValueError(f"images must be [batch, height, width, channels], got shape "
                     f"{tuple(images_BHWC.shape)}")
  b, h, w, c = images_BHWC.shape
  rows, cols = check_patchable(h, w, patch_size)
  x = images_BHWC.reshape(b, rows, patch_size, cols, patch_size, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, rows * cols, patch_size * patch_size * c)


def unpatchify(x_BNP, patch_size: int, height: int, width: int, channels: int):
  """Inverse of `patchify`."""
  rows, cols = check_patchable(height, width, patch_size)
  b, n, p = x_BNP.shape
  if n != rows * cols or p != patch_size * patch_size * channels:
    raise ValueError(f"patches of shape {(n, p)} do not tile a {height}x{width}x{channels} image "
                     f"with patch_size {patch_size}: expected {(rows * cols, patch_size ** 2 * channels)}")
  x = x_BNP.reshape(b, rows, cols, patch_size, patch_size, channels)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, height, width, channels)


def to_model_scale(images_uint8):
  """uint8 [0, 255] -> float32 [-1, 1]."""
  return images_uint8.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(images):
  """float [-1, 1] -> uint8, rounded and clipped."""
  return jnp.clip(jnp.round((images + 1.0) * 127.5), 0, 255).astype(jnp.uint8)
