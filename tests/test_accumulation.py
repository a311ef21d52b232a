"""train.grad_accum_steps: a batch of 8 as 2 microbatches of 4 trains, through the production
train_step.train_step, to the parameters and metrics of one batch of 8; bad values fail clearly."""


import jax
import numpy as np
import pytest
from flax import nnx

import factories as F
from pra_jax import config_check, loss, sharding, train_step


def _three_steps(graphdef, state, accum, images, labels):
  config = F.tiny_config(**{"train.grad_accum_steps": accum})
  step_fn = F.train_step_fn(graphdef, state, config)
  history = []
  for _ in range(3):
    state, metrics = step_fn(state, images, labels)
    history.append(jax.device_get(metrics))
  return F.flat_params(state["model"]), history


def test_two_microbatches_of_four_equal_one_batch_of_eight(monkeypatch):
  forward_sizes = []
  real_forward = loss.forward_train

  def recording_forward(model, images, *args):
    forward_sizes.append(images.shape[0])
    return real_forward(model, images, *args)

  monkeypatch.setattr(loss, "forward_train", recording_forward)
  config = F.tiny_config()
  graphdef, state = nnx.split(train_step.create_bundle(config, sharding.single_device_mesh()))
  images, labels = F.digits_batch(8)
  whole, whole_metrics = _three_steps(graphdef, state, 1, images, labels)
  assert forward_sizes == [8]
  forward_sizes.clear()
  micro, micro_metrics = _three_steps(graphdef, state, 2, images, labels)
  assert forward_sizes == [4]  # Traced once, in the scan over microbatches.

  worst = max(float(np.abs(micro[p] - whole[p]).max()) for p in whole)
  moved = max(float(np.abs(whole[p] - F.flat_params(state["model"])[p]).max()) for p in whole)
  assert moved > 1e-3  # The three steps did change the parameters.
  assert worst < 2e-6, worst  # Measured 1.2e-7: float32 sums in another order.
  for m_whole, m_micro in zip(whole_metrics, micro_metrics):
    assert m_micro["train/finite"] == 1.0
    for name in ("train/total", "train/head", "train/recon", "train/grad_norm"):
      np.testing.assert_allclose(m_micro[name], m_whole[name], rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("value,match", [
    (0, "train.grad_accum_steps must be a positive integer"),
    (3, "train.batch_size=8 must split into train.grad_accum_steps=3 equal microbatches"),
])
def test_bad_grad_accum_steps(value, match):
  with pytest.raises(ValueError, match=match):
    config_check.validate(F.tiny_config(**{"train.grad_accum_steps": value}))


def test_microbatches_must_spread_over_the_batch_devices():
  # 8 examples over 4 batch devices are 2 per device: 4 microbatches would leave devices idle.
  config = F.tiny_config(**{"train.grad_accum_steps": 4})
  with pytest.raises(ValueError, match="per-device batch 8/4 into them"):
    config_check.check_microbatches(config, 4)
  config_check.check_microbatches(config, 2)
