"""train.profile_steps: a short tiny run leaves a jax.profiler trace in workdir/profile, and a
malformed span is refused before anything compiles."""

import glob
import os

import numpy as np
import pytest

import factories as F
from pra_jax import config_check, profiling, train


def test_profile_steps_write_a_trace(tmp_path):
  workdir = str(tmp_path / "run")
  # Otherwise the config of test_train's resumed run: in the suite its compiles are cache hits.
  config = F.tiny_config(**{"train.num_steps": 3, "train.profile_steps": "2:3"})
  last = train.train_and_evaluate(config, workdir)
  assert np.isfinite(last["train/total"])
  traces = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", "*.xplane.pb"))
  assert len(traces) == 1, os.listdir(workdir)
  assert os.path.getsize(traces[0]) > 0


@pytest.mark.parametrize("text", ["10", "5:5", "0:2", "a:b", "3:1", "2:3:4"])
def test_malformed_spans_are_refused(text):
  with pytest.raises(ValueError, match="train.profile_steps=.* must be 'FIRST:STOP'"):
    config_check.validate(F.tiny_config(**{"train.profile_steps": text}))


def test_spans():
  assert profiling.parse_steps("") is None
  assert profiling.parse_steps("10:15") == (10, 15)
