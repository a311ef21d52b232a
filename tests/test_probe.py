"""Linear probing on the tiny config: the machinery learns, layers are selectable, bad layers fail."""

import numpy as np
import pytest

from configs import tiny
from pra_jax.studies import linear_probe
from pra_jax.models import pra


@pytest.fixture(scope="module")
def model_and_config():
  config = tiny.get_config()
  return pra.create_model(config), config


def test_probe_reports_backbone_and_pixel_accuracy(model_and_config):
  model, config = model_and_config
  result = linear_probe.probe(model, config, max_train_images=400, epochs=20, control=True)
  assert result["layer"] == config.model.backbone.depth // 2  # The default: mid-depth.
  assert result["num_train"] == 400 and result["num_eval"] == 297
  for key in ("backbone_eval_top1", "pixels_eval_top1", "backbone_train_top1",
              "untrained_eval_top1"):
    assert 0.0 <= result[key] <= 1.0
  # Digits are close to linearly separable in pixels: the probe itself must learn.
  assert result["pixels_eval_top1"] > 0.8, result
  # Even random features of a real backbone carry the digit far above chance (0.1).
  assert result["backbone_eval_top1"] > 0.3, result


def test_features_exclude_class_tokens_and_check_layer(model_and_config):
  model, config = model_and_config
  images, _ = linear_probe.load_split(config, "eval", max_images=4)
  feats = linear_probe.backbone_features(model, images, layer=-1, batch_size=4)
  assert feats.shape == (4, config.model.backbone.width) and np.isfinite(feats).all()
  # Several blocks: their pooled features side by side, the last one equal to the single probe.
  both = linear_probe.backbone_features(model, images, layer=(0, -1), batch_size=4)
  assert both.shape == (4, 2 * config.model.backbone.width)
  np.testing.assert_allclose(both[:, config.model.backbone.width:], feats, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="probe layer must be in"):
    linear_probe.backbone_features(model, images, layer=5, batch_size=4)
  with pytest.raises(ValueError, match="probe layer must be in"):
    linear_probe.backbone_features(model, images, layer=(0, 7), batch_size=4)
