"""InceptionV3 port: parity with pytorch-fid's FID Inception (pool_3, sFID's spatial features,
logits), TF1 resize, weight-file errors."""

import sys

import numpy as np
import pytest
from flax import nnx

from pra_jax.data import load_digits_split
from pra_jax.metrics import inception

BATCH = 4  # Every network call here and in test_fid.py uses this batch: one compile.


def _digit_images(n: int, size: int) -> np.ndarray:
  """Real-looking uint8 RGB: three different upsampled digit scans as the channels."""
  grey, _ = load_digits_split("eval", size)
  return np.concatenate([grey[i::3][:n] for i in range(3)], axis=-1)


def _fid_torch_inception(monkeypatch):
  """pytorch-fid's FID network (its fid_inception_v3 without the weight download), randomised.

  Conv/fc weights are He-normal and batch-norm affine terms and running statistics random,
  so every part of the port, normalisation included, affects the outputs.
  """
  # libtriton segfaults when it loads after TensorFlow's native libraries (TF comes in with
  # CLU or the resize reference); CPU torch never needs it, so hide it while torch imports.
  monkeypatch.setitem(sys.modules, "triton", None)
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  pfi = pytest.importorskip("pytorch_fid.inception")
  net = torchvision.models.Inception3(num_classes=1008, aux_logits=False, init_weights=False)
  net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
  net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
  net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
  net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
  net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
  net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
  net.Mixed_7b = pfi.FIDInceptionE_1(1280)
  net.Mixed_7c = pfi.FIDInceptionE_2(2048)
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, t in net.state_dict().items():
      if name.endswith("num_batches_tracked"):
        continue
      leaf = name.rsplit(".", 1)[1]
      if leaf == "weight" and t.ndim > 1:
        t.copy_(torch.randn(t.shape, generator=gen) * (2.0 / t[0].numel()) ** 0.5)
      elif leaf in ("weight", "running_var"):
        t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
      else:
        t.copy_(torch.randn(t.shape, generator=gen) * 0.1)
  return net.eval()


def _torch_forward(net, x_BHWC: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(pool_3, sFID features, logits): the spatial ones are Mixed_6d's 1x1 branch (the TF
  graph's mixed_6/conv), channels [:7], flattened in NHWC order as ADM's evaluator does."""
  import torch

  got = {}
  hooks = [net.avgpool.register_forward_hook(lambda m, i, o: got.update(pool=o.flatten(1))),
           net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: got.update(
               spatial=o[:, :7].permute(0, 2, 3, 1).flatten(1)))]
  with torch.no_grad():
    logits = net(torch.from_numpy(x_BHWC).permute(0, 3, 1, 2)).numpy()
  for hook in hooks:
    hook.remove()
  return got["pool"].numpy(), got["spatial"].numpy(), logits


def test_network_and_pipeline_match_pytorch_fid(tmp_path, monkeypatch):
  import tensorflow as tf
  from pra_jax.metrics import inception_convert as convert_inception

  net = _fid_torch_inception(monkeypatch)
  images = _digit_images(BATCH, 37)  # Not 299: the full pipeline has to resize.
  # The TF graph's own input path: TF1 bilinear resize of 0..255 values, then (x - 128) / 128.
  resized = tf.compat.v1.image.resize_bilinear(images, (299, 299), align_corners=False,
                                               half_pixel_centers=False).numpy()
  x = (resized - 128.0) / 128.0
  pool_t, spatial_t, logits_t = _torch_forward(net, x)

  # The converter on a saved .pth, and its in-memory form, give the same weights.
  pth, npz = tmp_path / "fid_random.pth", tmp_path / "fid_random.npz"
  import torch
  torch.save(net.state_dict(), pth)
  convert_inception.convert_file(str(pth), str(npz))
  model = inception.load_inception(str(npz))
  arrays = convert_inception.convert_state_dict(net.state_dict())
  with np.load(npz) as saved:
    assert sorted(saved.files) == sorted(arrays)
    np.testing.assert_array_equal(saved["Mixed_7c.branch_pool.bn.var"],
                                  arrays["Mixed_7c.branch_pool.bn.var"])

  graphdef, state = nnx.split(model)
  net_out = inception._network_jit(graphdef, state, x)  # The network alone, same input.
  full_out = inception.make_extractor(model)(images)  # uint8 in: resize, scale, network.
  fc_w = net.fc.weight.detach().numpy()
  for out in (net_out, full_out):
    pool_diff = np.abs(np.asarray(out.pool) - pool_t).max()
    assert out.spatial.shape == (BATCH, inception.NUM_SPATIAL) == (BATCH, 17 * 17 * 7)
    spatial_diff = np.abs(np.asarray(out.spatial) - spatial_t).max()
    logit_diff = np.abs(np.asarray(out.logits) - logits_t).max()
    unbiased_diff = np.abs(np.asarray(out.logits_unbiased) - pool_t @ fc_w.T).max()
    print(f"max abs diff: pool {pool_diff:.2e} spatial {spatial_diff:.2e} logits "
          f"{logit_diff:.2e} unbiased {unbiased_diff:.2e} (|pool| max {np.abs(pool_t).max():.1f},"
          f" |spatial| max {np.abs(spatial_t).max():.1f})")
    assert pool_diff <= 1e-4 and logit_diff <= 1e-4 and unbiased_diff <= 1e-4
    assert spatial_diff <= 1e-4 * max(1.0, np.abs(spatial_t).max())
  # Guard against a vacuous comparison: the features must spread and differ across images.
  assert np.asarray(net_out.pool).std(axis=0).mean() > 0.1
  assert np.asarray(net_out.spatial).std(axis=0).mean() > 0.01


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (2, 37, 29, 3), (1, 256, 256, 3),
                                   (2, 300, 300, 1), (1, 512, 411, 3), (3, 299, 299, 3)])
def test_resize_matches_tf1_resize_bilinear(shape):
  import tensorflow as tf
  images = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
  want = tf.compat.v1.image.resize_bilinear(images, (299, 299), align_corners=False,
                                            half_pixel_centers=False).numpy()
  got = np.asarray(inception.resize_bilinear_tf1(images, 299))
  print(f"{shape}: max abs diff {np.abs(got - want).max():.2e}")
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)


def test_preprocess_scales_like_the_graph_and_tiles_grey():
  grey = np.arange(256, dtype=np.uint8).repeat(299 * 299 // 256 + 1)[:299 * 299]
  grey = grey.reshape(1, 299, 299, 1)
  x = np.asarray(inception.preprocess(grey))
  assert x.shape == (1, 299, 299, 3)
  np.testing.assert_array_equal(x[..., 0], x[..., 2])
  np.testing.assert_array_equal(x[..., 1], (grey[..., 0].astype(np.float32) - 128) / 128)


def test_missing_weights_file_says_how_to_get_it(tmp_path):
  path = tmp_path / "nope.npz"
  with pytest.raises(FileNotFoundError, match=r"nope\.npz.*not found.*convert_inception"):
    inception.load_inception(str(path))


def test_weights_with_a_wrong_shape_name_the_array(tmp_path):
  path = tmp_path / "bad_shape.npz"
  np.savez(path, **{"Mixed_6b.branch7x7_2.conv.kernel": np.zeros((7, 1, 128, 128), np.float32)})
  with pytest.raises(ValueError, match=r"bad_shape\.npz.*'Mixed_6b\.branch7x7_2\.conv\.kernel'"
                                       r".*\(7, 1, 128, 128\), expected \(1, 7, 128, 128\)"):
    inception.load_inception(str(path))


def test_weights_missing_an_array_are_rejected(tmp_path):
  path = tmp_path / "partial.npz"
  np.savez(path, **{"fc.kernel": np.zeros((2048, 1008), np.float32), "extra": np.zeros(3)})
  with pytest.raises(ValueError, match=r"partial\.npz.* missing.*1 unexpected.*'extra'"):
    inception.load_inception(str(path))


def test_converter_rejects_unknown_parameters():
  from pra_jax.metrics import inception_convert as convert_inception

  with pytest.raises(ValueError, match="unexpected parameter 'head.weight'"):
    convert_inception.convert_state_dict({"head.weight": np.zeros((3, 3))})
