"""The coupled rollout baselines learn to read their prefix: after a short training run on the tiny
config, the held-out head loss with the image's own prefix is clearly below the loss with
another same-class image's prefix (pra_jax.gap's sensitivity control).

Uncoupled (rollout.couple_t0 = 0) both modes score about 1.01 here: a free sample carries
nothing of x_j, so the target is not predictable from the inputs and the prefix is ignored.
"""


import jax
import numpy as np
import pytest
from flax import nnx

import factories as F
from pra_jax import data, sharding, train_step
from pra_jax.studies import rollout_gap

STEPS, BATCH = 100, 32   # Measured: coupled 1.10, uncoupled 1.01 (teacher 1.69, pra 1.16).
TRAINING = {"train.batch_size": BATCH, "train.num_steps": STEPS, "train.lr": 3e-3,
            "train.warmup_steps": 10}


def train_tiny(config):
  """STEPS production train steps on random batches of the digits train split; the raw model."""
  bundle = train_step.create_bundle(config, sharding.single_device_mesh())
  graphdef, state = nnx.split(bundle)
  step = F.train_step_fn(graphdef, state, config, donate=True)
  images, labels = data.load_digits_split("train", config.data.image_size)
  order = np.random.default_rng(0)
  for _ in range(STEPS):
    idx = order.integers(0, len(labels), BATCH)
    state, _ = step(state, images[idx], labels[idx])
  return nnx.merge(graphdef, state).model


@pytest.mark.parametrize("mode", ["head_sample", "exact"])
def test_coupled_modes_learn_to_read_their_prefix(mode):
  model = train_tiny(F.tiny_config(**{"rollout.mode": mode, **TRAINING}))
  images, labels = data.load_digits_split("eval", 16)
  # teacher and other do not depend on the run's mode: one config, one compile for both runs.
  result = rollout_gap.measure(model, images, labels, jax.random.key(0), F.tiny_config(**TRAINING),
                       kinds=("teacher",), noise_draws=8, num_rollouts=1, batch_size=len(labels))
  assert result["other_mean"] > result["teacher_mean"]
  assert result["sensitivity"] > 1.05, (
      f"{mode}: own-prefix loss {result['teacher_mean']:.4f} vs other-image-prefix loss "
      f"{result['other_mean']:.4f}: the model ignores its prefix")
