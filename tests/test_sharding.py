"""The same train step on 1 device and on 8 fake CPU devices (data x fsdp) gives the same loss
and the same parameters; checkpoints move between mesh shapes; every parameter names its axes
from the one table."""

import json
import os
import subprocess
import sys

import jax
import pytest
from flax import nnx

import factories as F
from pra_jax import sharding
from pra_jax.models import pra

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a fresh interpreter: the fake device count must be set before jax is imported.
_PROGRAM = os.path.join(REPO, "tests", "programs", "sharding_one_vs_eight.py")


def test_one_device_equals_eight_and_checkpoints_move_between_meshes(tmp_path):
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, _PROGRAM, str(tmp_path / "ckpt")], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  r = json.loads(line[len("RESULT"):])
  assert abs(r["loss_1"] - r["loss_8"]) <= 1e-5 * max(1.0, abs(r["loss_1"])), r
  assert abs(r["gnorm_1"] - r["gnorm_8"]) <= 1e-4 * max(1.0, r["gnorm_1"]), r
  assert r["max_param_diff"] <= 1e-5, r
  assert r["fsdp_specs"] > 0, "no parameter was sharded over fsdp on the 8-device mesh"
  assert r["restored"]["four"]["max_diff"] == 0.0 and r["restored"]["four"]["devices"] == [4], r
  assert r["restored"]["one"]["max_diff"] == 0.0 and r["restored"]["one"]["devices"] == [1], r


@pytest.mark.parametrize("scan_layers", [True, False])
def test_every_parameter_names_its_axes_from_the_one_table(scan_layers):
  config = F.tiny_config(**{"model.backbone.scan_layers": scan_layers,
                            "model.backbone.pos_emb": "learned",
                            "model.state.decoder_context": True})
  model = pra.abstract_model(config)
  bad = []
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    names = var.get_metadata().get("out_sharding")
    if names is None or len(names) != var.get_value().ndim:
      bad.append(f"{path}: {names} for shape {var.get_value().shape}")
    elif set(names) - set(sharding.LOGICAL_NAMES) - {None}:
      bad.append(f"{path}: {set(names) - set(sharding.LOGICAL_NAMES) - {None}} not in the table")
  assert not bad, bad


def test_the_head_modulation_needs_no_resharding_under_tensor_parallelism():
  """AdaLN's shift / scale / gate come from one [chunks, F, F] kernel with the chunk axis whole,
  so with tensor = 2 each is split like the stream it modulates; one Linear to 3F and a split
  laid them end to end across the shards and cost collective-permutes in every block."""
  env = dict(os.environ, PYTHONPATH=REPO)
  proc = subprocess.run([sys.executable, os.path.join(REPO, "tests", "programs",
                                                      "head_collectives.py")],
                        cwd=REPO, env=env, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-4000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT")][-1]
  counts = json.loads(line[len("RESULT"):])["collectives"]
  print(counts)
  assert counts.get("all-reduce", 0) > 0, f"the head was not split over tensor at all: {counts}"
  assert counts.get("collective-permute", 0) == 0 and counts.get("all-to-all", 0) == 0, counts


def test_a_width_the_mesh_cannot_split_is_refused_by_name():
  config = F.tiny_config(**{"model.head.width": 12})
  params = nnx.state(pra.abstract_model(config), nnx.Param)
  fsdp_8 = jax.sharding.AbstractMesh((1, 8, 1), sharding.MESH_AXES)
  with pytest.raises(ValueError, match=r"parameter head/\S+ .*12 wide.*'fsdp' of size 8"):
    sharding.check_params_divide(params, fsdp_8)
  sharding.check_params_divide(params, jax.sharding.AbstractMesh((2, 4, 1), sharding.MESH_AXES))


def test_training_refuses_a_width_the_mesh_cannot_split_before_compiling(tmp_path):
  """fsdp = 8 over the head's 12-wide dimensions: one `error:` line and exit status 2, where the
  run used to train with those parameters silently replicated on every device."""
  flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  env = dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
  proc = subprocess.run(
      [sys.executable, "-m", "pra_jax.main", "--config=configs/tiny.py",
       f"--workdir={tmp_path / 'run'}", "--config.model.head.width=12",
       "--config.sharding.mesh.fsdp=8"],
      cwd=REPO, env=env, capture_output=True, text=True)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 2, proc.stderr[-4000:]
  assert lines[-1].startswith("error: parameter head/"), lines[-1]
  assert "12 wide" in lines[-1] and "'fsdp' of size 8" in lines[-1], lines[-1]
  assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
