"""data.source=synthetic: the paper configs run end to end (compile, steps, checkpoint, resume)
before ImageNet exists. pra_s.py shrunk to a few thousand parameters, its schedule (warmup, logs,
checkpoints, sample grids) scaled down with it, in process."""

import os

import numpy as np
import pytest

import factories as F
from configs import pra_s
from pra_jax import data, train


def _config(num_steps):
  c = F.shrunk_pra_s(num_steps)   # The real recipe: scanned bf16 backbone and head, 3 channels.
  c.data.source = "synthetic"
  c.data.synthetic_examples = 64
  # pra_s's own schedule, every period scaled by one factor (checkpoint.every -> 2), none turned
  # off (grids every 4 steps, and at the end of each run, steps 2 and 3, where a save follows
  # at the same step as at pra_s's 10,000). The sampler keeps pra_s's batch, 2 head steps.
  own = pra_s.get_config()
  scale = 2 / own.checkpoint.every
  for name in ("warmup_steps", "log_every", "sample_every"):
    c.train[name] = max(1, round(own.train[name] * scale))
  c.sample.num_steps = 2
  return c


def test_synthetic_source_has_the_real_shapes_and_is_deterministic():
  cfg = _config(1).data
  src = data.make_source(cfg, "train")
  a, b = src[5], src[5]
  assert a["image"].shape == (32, 32, 3) and a["image"].dtype == np.uint8
  assert a["label"].dtype == np.int32 and 0 <= int(a["label"]) < cfg.num_classes
  np.testing.assert_array_equal(a["image"], b["image"])
  assert not np.array_equal(src[5]["image"], src[6]["image"])
  assert len(data.make_source(cfg, "validation")) == 6


def test_pra_s_smoke_trains_checkpoints_and_resumes_on_synthetic_data(tmp_path):
  workdir = str(tmp_path / "run")
  first = train.train_and_evaluate(_config(2), workdir)
  assert np.isfinite(first["train/total"])
  assert "2" in os.listdir(os.path.join(workdir, "checkpoints"))
  assert os.listdir(os.path.join(workdir, "samples")) == ["step_0000002.png"]
  resumed = train.train_and_evaluate(_config(3), workdir)   # Resumes at step 2, runs step 3.
  assert np.isfinite(resumed["train/total"])
  assert "3" in os.listdir(os.path.join(workdir, "checkpoints"))
