"""train.ema_decays: several EMAs of one run, each updated at its own decay, each checkpointed as
its own part and read back by name (what python -m pra_jax.sweep --weights chooses among)."""

import numpy as np
import pytest

import factories as F
from pra_jax import config_check, optim, restore, sharding, train, train_step

MESH = sharding.single_device_mesh()


def _params(model):
  return {path: np.asarray(v) for path, v in F.flat_params(model).items()}


def test_each_extra_ema_follows_its_own_decay_and_restores_by_name(tmp_path):
  config = F.tiny_config(**{"train.ema_decays": (0.5, 0.0)})
  config.train.num_steps = config.checkpoint.every = 1
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  init = _params(train_step.create_bundle(config, MESH).model)  # Seeded: the run's init.
  raw, ema, ema_1, ema_2 = (_params(restore.restore_weights(config, workdir, 1, MESH, w))
                            for w in ("raw", "ema", "ema_1", "ema_2"))
  d = float(optim.ema_decay_at(0.5, 0))  # The warm-up's first decay, min(0.5, 1 / 10).
  for path in raw:
    np.testing.assert_array_equal(ema_2[path], raw[path])       # Decay 0: the raw weights.
    np.testing.assert_allclose(ema_1[path], d * init[path] + (1 - d) * raw[path], atol=1e-6)
  assert max(float(np.abs(raw[k] - init[k]).max()) for k in raw) > 1e-4  # The step moved.
  with pytest.raises(ValueError, match="does not restore"):
    restore.restore_weights(config, workdir, 1, MESH, "ema_3")


def test_bad_decays_are_rejected():
  for bad in ((1.0,), ("0.9",), "0.9"):
    config = F.tiny_config()
    config.train.ema_decays = bad
    with pytest.raises(ValueError, match="train.ema_decays must be a tuple of floats"):
      config_check.validate(config)


def test_memory_per_extra_ema_is_one_parameter_copy():
  """The compiled step's argument bytes grow by the parameter bytes per extra EMA."""
  sizes = {}
  for decays in ((), (0.99,)):
    config = F.tiny_config(**{"train.ema_decays": decays})
    compiled = train_step.compile_train_step(config, MESH, config.train.batch_size)[0]
    sizes[len(decays)] = compiled.memory_analysis().argument_size_in_bytes
  model = train_step.create_bundle(F.tiny_config(), MESH).model
  assert sizes[1] - sizes[0] == sum(v.nbytes for v in _params(model).values())
