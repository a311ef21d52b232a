"""train.ema_decays: several EMAs of one run, each updated at its own decay, each checkpointed as
its own part and read back by name (what python -m pra_jax.sweep --weights chooses among)."""

import numpy as np
import pytest

import factories as F
from pra_jax import config_check, memory_plan, optim, restore, sharding, train, train_step

MESH = sharding.single_device_mesh()


def _params(model):
  return {path: np.asarray(v) for path, v in F.flat_params(model).items()}


def test_each_extra_ema_follows_its_own_decay_and_restores_by_name(tmp_path):
  config = F.tiny_config(**{"train.ema_decays": (0.1, 0.0)})
  config.train.num_steps, config.checkpoint.every = 2, 1
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  at = lambda step, w: _params(restore.restore_weights(config, workdir, step, MESH, w))
  raw, ema, ema_1, ema_2 = (at(2, w) for w in ("raw", "ema", "ema_1", "ema_2"))
  before = at(1, "ema_1")
  d = float(optim.ema_decay_at(0.1, 1))  # Step 1's decay: min(0.1, 2 / 11) = 0.1.
  for path in raw:
    np.testing.assert_array_equal(ema_2[path], raw[path])       # Decay 0: the raw weights.
    np.testing.assert_allclose(ema_1[path], d * before[path] + (1 - d) * raw[path], atol=1e-6)
  moved = lambda a, b: max(float(np.abs(a[k] - b[k]).max()) for k in a)
  assert moved(raw, at(1, "raw")) > 1e-4         # Step 2 moved the weights.
  assert moved(ema_1, ema) > 1e-6                # The main EMA (0.9, warmed up) is another mean.
  with pytest.raises(ValueError, match=r"no weights 'ema_3' in this run: it keeps"):
    restore.restore_weights(config, workdir, 2, MESH, "ema_3")


def test_bad_decays_are_rejected():
  for bad in ((1.0,), ("0.9",), (-0.1, 0.9)):  # (A bare string ConfigDict refuses itself.)
    config = F.tiny_config()
    config.train.ema_decays = bad
    with pytest.raises(ValueError, match="train.ema_decays must be a tuple of floats"):
      config_check.validate(config)


def test_memory_per_extra_ema_is_one_parameter_copy():
  """The plan counts every EMA, and the compiled step's argument bytes grow by the parameter
  bytes per extra EMA."""
  plans = {n: memory_plan.plan(F.tiny_config(**{"train.ema_decays": (0.99,) * n}), 1)
           for n in (0, 1)}
  model = train_step.create_bundle(F.tiny_config(), MESH).model
  param_bytes = sum(v.nbytes for v in _params(model).values())
  assert plans[0]["emas"] == 1 and plans[1]["emas"] == 2
  assert plans[0]["ema"] == param_bytes and plans[1]["ema"] == 2 * param_bytes
  assert plans[1]["arguments"] - plans[0]["arguments"] == param_bytes
