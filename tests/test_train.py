"""End-to-end training on the tiny config: train -> checkpoint -> resume -> sample, and the
checks that must fire before anything compiles."""

import os
import subprocess
import sys

import numpy as np
import pytest

from configs import tiny
from pra_jax import checkpoint, config_check, train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_module(module, *args, env=None):
  """Runs `python -m module args` from the repo root to its end (no wall-clock limit: a loaded
  machine would trip it); returns the completed process."""
  full_env = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
  return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=full_env,
                        capture_output=True, text=True)


def test_train_checkpoint_resume_sample(tmp_path):
  workdir = str(tmp_path / "run")
  config = tiny.get_config()
  config.train.num_steps = 2
  config.checkpoint.every = 2
  first = train.train_and_evaluate(config, workdir)
  assert np.isfinite(first["train/total"])
  assert checkpoint.Checkpointer(workdir, config.checkpoint).all_steps() == [2]

  config.train.num_steps = 3
  second = train.train_and_evaluate(config, workdir)
  # Resumed at step 2: exactly one more step ran, and its checkpoint is the final one.
  assert checkpoint.Checkpointer(workdir, config.checkpoint).all_steps() == [2, 3]
  assert second["train/total"] != first["train/total"]

  out = str(tmp_path / "samples.npz")
  proc = run_module("pra_jax.sample", "--config=configs/tiny.py", f"--workdir={workdir}",
                    "--num_images=12", f"--out={out}", "--classes=3,7", "--steps=2")
  assert proc.returncode == 0, proc.stderr[-3000:]
  with np.load(out, allow_pickle=False) as f:
    images, labels = f["arr_0"], f["arr_1"]
  assert images.shape == (12, 16, 16, 1) and images.dtype == np.uint8
  assert sorted(set(labels.tolist())) == [3, 7]
  assert os.path.getsize(out[:-4] + ".png") > 0


def test_sampling_a_workdir_without_checkpoint(tmp_path):
  from pra_jax import restore
  with pytest.raises(FileNotFoundError, match="no checkpoint in"):
    restore.restore_for_sampling(tiny.get_config(), str(tmp_path))


@pytest.mark.parametrize("field,value,match", [
    ("model.patch_size", 5, "not divisible by model.patch_size"),
    ("rollout.mode", "rollout", "rollout.mode=.rollout. is not one of"),
    ("data.source", "imagenet", "data.source='imagenet' is not one of"),
    ("train.nonfinite", "ignore", "train.nonfinite"),
    ("model.state.dim", 2, "leaves the state 0 degrees of freedom"),
])
def test_bad_config_values_fail_before_compiling(tmp_path, field, value, match):
  config = tiny.get_config()
  config_check.set_field(config, field, value)
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


def test_mesh_larger_than_devices(tmp_path):
  config = tiny.get_config()
  config.sharding.mesh.data = 4
  with pytest.raises(ValueError, match="needs 4 devices, but 1 are available"):
    train.train_and_evaluate(config, str(tmp_path))


def test_missing_data_and_empty_folder(tmp_path):
  config = tiny.get_config()
  config.data.source = "folder"
  config.data.folder = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    train.train_and_evaluate(config, str(tmp_path / "run1"))
  (tmp_path / "empty" / "class_a").mkdir(parents=True)
  config.data.folder = str(tmp_path / "empty")
  with pytest.raises(ValueError, match="no images"):
    train.train_and_evaluate(config, str(tmp_path / "run2"))


def test_missing_tfds_dataset_names_the_build_command(tmp_path):
  config = tiny.get_config()
  config.data.source = "tfds"
  config.data.tfds_data_dir = str(tmp_path / "tfds")
  with pytest.raises(FileNotFoundError, match="pra_jax.tools.build_imagenet --manual_dir=DIR"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  (tmp_path / "tfds").mkdir()
  with pytest.raises(ValueError, match="pra_jax.tools.build_imagenet --manual_dir=DIR"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def test_workdir_of_another_model_is_refused(tmp_path):
  workdir = str(tmp_path)
  config = tiny.get_config()
  config.train.num_steps = config.checkpoint.every = 1
  train.train_and_evaluate(config, workdir)
  config.model.backbone.width = 64
  with pytest.raises(ValueError, match="another run: model.backbone.width: 32 -> 64"):
    train.train_and_evaluate(config, workdir)
