"""InceptionV3 of the 2015-12-05 TF graph, FID variant, in Flax NNX: pool_3 features, the
spatial features of sFID, and logits.

Matches pytorch-fid's FID Inception layer for layer; weights come from a user-supplied .npz.

Dimension legend (pra_jax's table): B batch, H/W/C image height/width/channels, D = 2048
pool_3 features, Y = 1008 logits; the 2023 spatial features of sFID are one flat vector a row.
"""

import functools
import os
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

IMAGE_SIZE = 299
NUM_FEATURES = 2048
NUM_LOGITS = 1008
# sFID's features: the first 7 channels of the TF graph's `mixed_6/conv` on the 17x17 grid,
# flattened in (row, column, channel) order, as ADM's evaluator reshapes them.
SPATIAL_GRID, SPATIAL_CHANNELS = 17, 7
NUM_SPATIAL = SPATIAL_GRID * SPATIAL_GRID * SPATIAL_CHANNELS  # 2023
BN_EPSILON = 1e-3
HIGHEST = lax.Precision.HIGHEST

WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_HOWTO = (
    f"Download pytorch-fid's FID Inception weights ({WEIGHTS_URL}) and convert them with "
    "`python -m pra_jax.tools.convert_inception --pth=pt_inception-2015-12-05-6726825d.pth "
    "--out=inception_fid.npz` (needs torch; see requirements-test.txt).")

# He-normal kernels keep a random-weight (test) network's activations at a sane size; real
# use loads the converted weights over them.
_KERNEL_INIT = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")


class InceptionOutput(NamedTuple):
  pool: jax.Array  # [B, D] pool_3, the FID features.
  spatial: jax.Array  # [B, 2023] mixed_6/conv[..., :7] flattened, the sFID features.
  logits: jax.Array  # [B, Y] the graph's softmax/logits, fc bias included.
  logits_unbiased: jax.Array  # [B, Y] pool @ fc kernel, what ADM's Inception Score uses.


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class ConvBN(nnx.Module):
  """Bias-free conv, batch norm from running statistics (eps 1e-3), ReLU."""

  def __init__(self, in_ch: int, out_ch: int, kernel, stride: int = 1, padding=0, *,
               rngs: nnx.Rngs):
    ph, pw = _pair(padding)
    self.conv = nnx.Conv(in_ch, out_ch, _pair(kernel), strides=stride,
                         padding=((ph, ph), (pw, pw)), use_bias=False, precision=HIGHEST,
                         kernel_init=_KERNEL_INIT, rngs=rngs)
    self.bn = nnx.BatchNorm(out_ch, use_running_average=True, epsilon=BN_EPSILON, rngs=rngs)

  def __call__(self, x_BHWC):
    return jax.nn.relu(self.bn(self.conv(x_BHWC)))


def _max_pool_3x3(x_BHWC, stride: int, pad: int = 0):
  pads = ((0, 0), (pad, pad), (pad, pad), (0, 0))
  return lax.reduce_window(x_BHWC, -jnp.inf, lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pads)


def _avg_pool_3x3_same(x_BHWC):
  """3x3 stride-1 average over the window's in-image pixels only, as the TF graph pools."""
  pads = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = lax.reduce_window(x_BHWC, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
  ones = jnp.ones((1, *x_BHWC.shape[1:3], 1), x_BHWC.dtype)
  count = lax.reduce_window(ones, 0.0, lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pads)
  return total / count


class InceptionA(nnx.Module):
  """Mixed_5b-d: 1x1 | 5x5 | double 3x3 | avg-pool branches."""

  def __init__(self, in_ch: int, pool_features: int, *, rngs: nnx.Rngs):
    self.branch1x1 = ConvBN(in_ch, 64, 1, rngs=rngs)
    self.branch5x5_1 = ConvBN(in_ch, 48, 1, rngs=rngs)
    self.branch5x5_2 = ConvBN(48, 64, 5, padding=2, rngs=rngs)
    self.branch3x3dbl_1 = ConvBN(in_ch, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = ConvBN(96, 96, 3, padding=1, rngs=rngs)
    self.branch_pool = ConvBN(in_ch, pool_features, 1, rngs=rngs)

  def __call__(self, x):
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    bp = self.branch_pool(_avg_pool_3x3_same(x))
    return jnp.concatenate([self.branch1x1(x), b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
  """Mixed_6a: grid reduction 35 -> 17."""

  def __init__(self, in_ch: int, *, rngs: nnx.Rngs):
    self.branch3x3 = ConvBN(in_ch, 384, 3, stride=2, rngs=rngs)
    self.branch3x3dbl_1 = ConvBN(in_ch, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = ConvBN(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = ConvBN(96, 96, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return jnp.concatenate([self.branch3x3(x), b3, _max_pool_3x3(x, 2)], axis=-1)


class InceptionC(nnx.Module):
  """Mixed_6b-e: factorised 7x7 branches."""

  def __init__(self, in_ch: int, channels_7x7: int, *, rngs: nnx.Rngs):
    c7 = channels_7x7
    self.branch1x1 = ConvBN(in_ch, 192, 1, rngs=rngs)
    self.branch7x7_1 = ConvBN(in_ch, c7, 1, rngs=rngs)
    self.branch7x7_2 = ConvBN(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7_3 = ConvBN(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_1 = ConvBN(in_ch, c7, 1, rngs=rngs)
    self.branch7x7dbl_2 = ConvBN(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_3 = ConvBN(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7dbl_4 = ConvBN(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_5 = ConvBN(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch_pool = ConvBN(in_ch, 192, 1, rngs=rngs)

  def __call__(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    bd = x
    for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                  self.branch7x7dbl_4, self.branch7x7dbl_5):
      bd = layer(bd)
    bp = self.branch_pool(_avg_pool_3x3_same(x))
    return jnp.concatenate([self.branch1x1(x), b7, bd, bp], axis=-1)


class InceptionD(nnx.Module):
  """Mixed_7a: grid reduction 17 -> 8."""

  def __init__(self, in_ch: int, *, rngs: nnx.Rngs):
    self.branch3x3_1 = ConvBN(in_ch, 192, 1, rngs=rngs)
    self.branch3x3_2 = ConvBN(192, 320, 3, stride=2, rngs=rngs)
    self.branch7x7x3_1 = ConvBN(in_ch, 192, 1, rngs=rngs)
    self.branch7x7x3_2 = ConvBN(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7x3_3 = ConvBN(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7x3_4 = ConvBN(192, 192, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3_2(self.branch3x3_1(x))
    b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
    return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2)], axis=-1)


class InceptionE(nnx.Module):
  """Mixed_7b (avg-pool branch) and Mixed_7c (max-pool branch, a quirk of the 2015 graph)."""

  def __init__(self, in_ch: int, pool: str, *, rngs: nnx.Rngs):
    if pool not in ("avg", "max"):
      raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
    self.pool = pool
    self.branch1x1 = ConvBN(in_ch, 320, 1, rngs=rngs)
    self.branch3x3_1 = ConvBN(in_ch, 384, 1, rngs=rngs)
    self.branch3x3_2a = ConvBN(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3_2b = ConvBN(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch3x3dbl_1 = ConvBN(in_ch, 448, 1, rngs=rngs)
    self.branch3x3dbl_2 = ConvBN(448, 384, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3a = ConvBN(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3dbl_3b = ConvBN(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch_pool = ConvBN(in_ch, 192, 1, rngs=rngs)

  def __call__(self, x):
    b3 = self.branch3x3_1(x)
    b3 = jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], axis=-1)
    bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    bd = jnp.concatenate([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], axis=-1)
    pooled = _avg_pool_3x3_same(x) if self.pool == "avg" else _max_pool_3x3(x, 1, pad=1)
    return jnp.concatenate([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], axis=-1)


class InceptionV3(nnx.Module):
  """The FID Inception. Call on [B, 299, 299, 3] float32 already scaled to [-1, 1)."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.Conv2d_1a_3x3 = ConvBN(3, 32, 3, stride=2, rngs=rngs)
    self.Conv2d_2a_3x3 = ConvBN(32, 32, 3, rngs=rngs)
    self.Conv2d_2b_3x3 = ConvBN(32, 64, 3, padding=1, rngs=rngs)
    self.Conv2d_3b_1x1 = ConvBN(64, 80, 1, rngs=rngs)
    self.Conv2d_4a_3x3 = ConvBN(80, 192, 3, rngs=rngs)
    self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
    self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
    self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
    self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = InceptionE(1280, "avg", rngs=rngs)
    self.Mixed_7c = InceptionE(2048, "max", rngs=rngs)
    self.fc = nnx.Linear(NUM_FEATURES, NUM_LOGITS, precision=HIGHEST, kernel_init=_KERNEL_INIT,
                         rngs=rngs)

  def __call__(self, x_BHWC) -> InceptionOutput:
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x_BHWC)))  # 147x147x64
    x = _max_pool_3x3(x, 2)  # 73x73
    x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))  # 71x71x192
    x = _max_pool_3x3(x, 2)  # 35x35
    for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                  self.Mixed_6c, self.Mixed_6d):
      x = block(x)  # ends at 17x17x768
    # ADM's sFID reads `mixed_6/conv:0` of the TF graph, channels [:7]. Which layer that is:
    # the graph names its 11 mixed blocks mixed, mixed_1, ..., mixed_10 in build order, one
    # per block here (Mixed_5b ... Mixed_7c), so mixed_6 is the 7th, Mixed_6d. The shapes pin
    # the order: mixed_3 is the only 35 -> 17 reduction (Mixed_6a), mixed_4's 7x7 towers are
    # 128 wide (Mixed_6b's channels_7x7), mixed_7's 192 (Mixed_6e), and mixed_5 and mixed_6 the
    # two 160-wide ones between (Mixed_6c, Mixed_6d); pytorch-fid's TF-to-torch weight mapping
    # pairs mixed_6/conv with Mixed_6d.branch1x1 the same way. Inside a mixed block, `conv` is
    # the 1x1 branch (the towers are tower, tower_1, tower_2) and the tensor named `conv` is
    # its ReLU output (conv/Conv2D and conv/batchnorm come before it): 17x17x192, which is
    # ConvBN's output here. The block concatenates that branch first, so its first 7 channels
    # are channels [:7] of Mixed_6d's output. Established from the graph's naming scheme and
    # the shapes, not by running the TF graph (no weights here to compare with): certain about
    # the block and branch (shape-pinned), about as certain that ":0" is the post-ReLU tensor.
    spatial = x[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
    for block in (self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
      x = block(x)  # ends at 8x8x2048
    pool_BD = jnp.mean(x, axis=(1, 2))
    unbiased_BY = jnp.dot(pool_BD, self.fc.kernel[...], precision=HIGHEST)
    return InceptionOutput(pool_BD, spatial, unbiased_BY + self.fc.bias[...], unbiased_BY)


# ----------------------------------------------------------------------------- preprocessing

def _tf1_axis_weights(in_size: int, out_size: int):
  """Source indices and lerp weights of TF1's legacy bilinear resize along one axis.

  align_corners=False, half_pixel_centers=False: output i samples input i * in/out, with the
  scale and the product rounded to float32 as TF's kernel does.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  src = np.arange(out_size, dtype=np.float32) * scale
  lower = np.floor(src)
  upper = np.minimum(np.ceil(src), in_size - 1).astype(np.int32)
  return lower.astype(np.int32), upper, (src - lower).astype(np.float32)


def resize_bilinear_tf1(images_BHWC, size: int = IMAGE_SIZE):
  """float32 resize to [B, size, size, C] matching tf.compat.v1.image.resize_bilinear."""
  x = jnp.asarray(images_BHWC, jnp.float32)
  _, h, w, _ = x.shape
  if (h, w) == (size, size):
    return x
  y0, y1, ly = _tf1_axis_weights(h, size)
  x0, x1, lx = _tf1_axis_weights(w, size)
  lx = jnp.asarray(lx)[None, None, :, None]
  ly = jnp.asarray(ly)[None, :, None, None]

  def along_width(rows):
    left, right = jnp.take(rows, x0, axis=2), jnp.take(rows, x1, axis=2)
    return left + (right - left) * lx

  # The same order of operations as TF's kernel: lerp along x on both rows, then along y.
  top = along_width(jnp.take(x, y0, axis=1))
  bottom = along_width(jnp.take(x, y1, axis=1))
  return top + (bottom - top) * ly


def preprocess(images_BHWC):
  """uint8 [B, H, W, 1 or 3] -> float32 [B, 299, 299, 3], the graph's own input pipeline.

  The 2015 graph resizes raw 0..255 values, then maps them by (x - 128) / 128 (pytorch-fid's
  2x - 1 on [0, 1] differs from this by half a grey level).
  """
  if images_BHWC.ndim != 4 or images_BHWC.shape[-1] not in (1, 3):
    raise ValueError(f"images must be [B, H, W, 1 or 3], got shape {images_BHWC.shape}")
  x = resize_bilinear_tf1(images_BHWC, IMAGE_SIZE)
  if x.shape[-1] == 1:
    x = jnp.tile(x, (1, 1, 1, 3))  # Grey scans (the digits demo) as RGB.
  return (x - 128.0) * (1.0 / 128.0)


_preprocess_jit = jax.jit(preprocess)


@functools.partial(jax.jit, static_argnums=0)
def _network_jit(graphdef, state, x_BHWC) -> InceptionOutput:
  return nnx.merge(graphdef, state)(x_BHWC)


def make_extractor(model: InceptionV3, mesh: jax.sharding.Mesh | None = None
                   ) -> Callable[[jax.Array], InceptionOutput]:
  """uint8 images [B, H, W, C] -> InceptionOutput; split once, compiled once per batch shape.

  Preprocessing and the network are two jits, so every input size shares the network's
  compile. With a mesh the weights are replicated over it and a batch sharded over its data
  axis runs data-parallel (the jits follow the input's sharding).
  """
  graphdef, state = nnx.split(model)
  if mesh is not None:
    state = jax.device_put(state, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()))

  def extract(images_BHWC) -> InceptionOutput:
    return _network_jit(graphdef, state, _preprocess_jit(images_BHWC))

  return extract


# ----------------------------------------------------------------------------- weights

@functools.cache
def _abstract_model():
  """(graphdef, [(path, abstract variable)]) of InceptionV3; tracing it takes seconds."""
  graphdef, state = nnx.split(nnx.eval_shape(lambda: InceptionV3(rngs=nnx.Rngs(0))))
  return graphdef, tuple(nnx.to_flat_state(state))


def weight_shapes() -> dict[str, tuple[int, ...]]:
  """The .npz array names (NNX state paths joined by '.') and their shapes."""
  return {".".join(map(str, p)): tuple(v.shape) for p, v in _abstract_model()[1]}


def save_inception(model: InceptionV3, path: str) -> None:
  """Writes the model's weights as a plain .npz in the layout load_inception reads."""
  arrays = {".".join(map(str, p)): np.asarray(v[...], np.float32)
            for p, v in nnx.to_flat_state(nnx.state(model))}
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def _model_from_arrays(get: Callable[[str], np.ndarray], names: set[str], source: str):
  """Checks shapes of the arrays present, then that none is missing or extra, then builds."""
  graphdef, flat = _abstract_model()
  expected = weight_shapes()
  arrays = {}
  for name, shape in expected.items():
    if name in names:
      arrays[name] = get(name)
      if tuple(arrays[name].shape) != shape:
        raise ValueError(f"Inception weights {source}: array {name!r} has shape "
                         f"{tuple(arrays[name].shape)}, expected {shape}")
  missing, extra = sorted(set(expected) - names), sorted(names - set(expected))
  if missing or extra:
    raise ValueError(
        f"Inception weights {source} do not hold the expected arrays: "
        f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unexpected "
        f"(e.g. {extra[:3]}). {WEIGHTS_HOWTO}")
  state = [(p, var.replace(jnp.asarray(arrays[".".join(map(str, p))], jnp.float32)))
           for p, var in flat]
  return nnx.merge(graphdef, nnx.from_flat_state(state))


def load_inception(path: str) -> InceptionV3:
  """Builds InceptionV3 from a weights .npz (see WEIGHTS_HOWTO), checking every array."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Inception weights file {path!r} not found. {WEIGHTS_HOWTO}")
  with np.load(path, allow_pickle=False) as npz:
    return _model_from_arrays(lambda name: npz[name], set(npz.files), f"file {path!r}")


def random_inception(seed: int = 0) -> InceptionV3:
  """Random weights drawn on the host, for tests and smoke runs (no per-layer device RNG).

  Kernels are He-normal so activations keep their scale through the 95 layers; batch-norm
  statistics and affine terms are random too, so a port that mishandles them shows it.
  """
  rng = np.random.default_rng(seed)
  arrays = {}
  for name, shape in weight_shapes().items():
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "kernel":
      arr = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
    elif leaf in ("scale", "var"):
      arr = rng.uniform(0.5, 1.5, shape)
    else:  # bias, mean
      arr = rng.normal(0.0, 0.1, shape)
    arrays[name] = arr.astype(np.float32)
  return _model_from_arrays(arrays.__getitem__, set(arrays), f"random_inception(seed={seed})")
