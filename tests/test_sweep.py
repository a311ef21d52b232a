"""The sampler sweep (pra_jax/sampling/knob_sweep.py, python -m pra_jax.sweep) on a tiny trained
run: one restore, one compile per batch shape, each point's images those of the sampler at its
settings, a JSON that resumes, a table and a plot.

The judge is replaced by a cheap stand-in that records what it was given (the real digits judge
trains a classifier first; tests/test_digits_metrics.py tests it)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from pra_jax import periodic_eval, restore, rng, train
from pra_jax.sampling import ar_loop, data_parallel, knob_sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_IMAGES, SEED = 20, 3


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  config = tiny.get_config()
  config.train.num_steps = config.checkpoint.every = 2
  train.train_and_evaluate(config, workdir)
  return workdir


@pytest.fixture
def spies(monkeypatch):
  """Counts restores and compiles; the judge's stand-in keeps every point's images."""
  seen = {"restores": 0, "compiles": 0, "images": []}
  real_restore, real_init = restore.restore_weights, data_parallel.DataParallelGenerator.__init__

  def counting_restore(*args, **kwargs):
    seen["restores"] += 1
    return real_restore(*args, **kwargs)

  def counting_init(self, *args, **kwargs):
    seen["compiles"] += 1
    real_init(self, *args, **kwargs)

  def stand_in_judge(images, labels, config, cache_dir):
    seen["images"].append(images)
    return {"digits_fd": float(np.abs(images.astype(np.float32) - 128).mean()),
            "digits_accuracy": float((images.reshape(len(images), -1).mean(1) > 128).mean())}

  monkeypatch.setattr(restore, "restore_weights", counting_restore)
  monkeypatch.setattr(data_parallel.DataParallelGenerator, "__init__", counting_init)
  monkeypatch.setattr(periodic_eval, "evaluate_samples", stand_in_judge)
  return seen


def _grid(cfg):
  return knob_sweep.grid(weights=["ema"], cfg=cfg, temperature=[1.0, 0.8], num_steps=[3],
                         min_steps=[0, 1], solver=["euler"], cfg_schedule=["linear"])


def _run(workdir, out_dir, points, num_images=NUM_IMAGES):
  return knob_sweep.run(tiny.get_config(), workdir, out_dir, points, num_images=num_images,
                        seed=SEED, per_device_batch=8, step=2, command=["test"])


def test_sweep_samples_each_point_once_with_its_own_knobs_and_resumes(workdir, tmp_path, spies):
  out_dir = str(tmp_path / "sweep")
  points = _grid([1.0, 2.0])
  result = _run(workdir, out_dir, points)
  assert len(result["records"]) == len(points) == 8
  assert spies["restores"] == 1
  assert spies["compiles"] == 2      # cfg = 1 (B rows) and guided (2B rows): two batch shapes.
  # Each point's images are what the static sampler draws at its settings for the same keys.
  config = tiny.get_config()
  mesh = data_parallel.sampling_mesh()
  model = restore.restore_weights(config, workdir, 2, mesh)
  labels = periodic_eval.balanced_labels(NUM_IMAGES, config.data.num_classes)
  by_name = dict(zip([p.name for p in sorted(points, key=lambda p: (p.weights,
                                                                      p.compile_key()))],
                     spies["images"]))
  for p in (points[0], points[-1]):
    want = ar_loop.generate_many(model, labels, rng.stream(SEED, "sample"), p.settings(), 10)
    diff = np.abs(want.astype(np.int32) - by_name[p.name])
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99, p.name
  # (Two training steps barely move the zero-initialised head: its steps hardly show in uint8,
  # so the check above, against the sampler compiled for each point, is the one that counts.)
  assert len({img.tobytes() for img in spies["images"]}) >= 4
  saved = json.load(open(os.path.join(out_dir, "sweep.json")))
  assert [r["name"] for r in saved["points"]] == [p.name for p in points]
  best = min(saved["points"], key=lambda r: r["metrics"]["digits_fd"])
  assert result["best"]["name"] == best["name"]
  table = open(os.path.join(out_dir, "sweep.md")).read()
  assert "**best**" in table and table.count("\n| ") == 9
  assert open(os.path.join(out_dir, "sweep.png"), "rb").read(4) == b"\x89PNG"
  # Resumed with one more cfg: only its points are sampled.
  spies["images"].clear()
  result = _run(workdir, out_dir, _grid([1.0, 2.0, 3.0]))
  assert len(spies["images"]) == 4 and len(result["records"]) == 12
  # Another protocol in the same folder is refused, naming what differs.
  with pytest.raises(ValueError, match="num_images"):
    _run(workdir, out_dir, points, num_images=NUM_IMAGES + 1)


def test_best_command_names_every_knob():
  best = {"cfg": 1.5, "temperature": 0.9, "num_steps": 8, "min_steps": 2, "solver": "heun",
          "cfg_schedule": "constant", "weights": "raw"}
  command = knob_sweep.best_command(best, "/w", 1000, 0)
  for part in ("--cfg=1.5", "--temperature=0.9", "--steps=8", "--anneal=2", "--solver=heun",
               "--schedule=constant",
               "--checkpoint_step=1000", "--raw_weights"):
    assert part in command


def test_the_printed_best_command_samples_there(workdir, tmp_path):
  """The command the sweep prints runs as it stands (with fewer images): pra_jax.sample takes
  every knob of a point as a flag, and reads the run's own config."""
  import shlex
  best = {"cfg": 1.5, "temperature": 0.9, "num_steps": 3, "min_steps": 1, "solver": "heun",
          "cfg_schedule": "constant", "weights": "ema"}
  args = shlex.split(knob_sweep.best_command(best, workdir, 2, 0))
  assert args[:3] == ["python", "-m", "pra_jax.sample"], args
  out = str(tmp_path / "best.npz")
  args = [a if not a.startswith("--out=") else f"--out={out}" for a in args[1:]]
  proc = subprocess.run([sys.executable, *args, "--num_images=10"], cwd=REPO, capture_output=True,
                        text=True, env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "num_steps=3, solver='heun', cfg=1.5, cfg_schedule='constant', temperature=0.9, " \
         "min_steps=1" in proc.stdout, proc.stdout
  assert np.load(out)["arr_0"].shape[0] == 10


def test_a_checkpoint_of_another_layout_is_one_line(workdir, tmp_path):
  """The run's record matches the config but the arrays do not fit the model this pra_jax
  builds (as a demo checkpoint from before the head's [3, F, F] modulation kernel): one line
  naming the checkpoint and what to do, status 2, no traceback."""
  import shutil
  run = str(tmp_path / "run")
  shutil.copytree(workdir, run)
  with open(os.path.join(run, "config.json")) as f:
    recorded = json.load(f)
  recorded["model"]["head"]["width"] *= 2   # Every head array another shape than was saved.
  with open(os.path.join(run, "config.json"), "w") as f:
    json.dump(recorded, f)
  proc = subprocess.run(
      # No --config: the sweep reads the run's own config.json, as pra_jax.sample does.
      [sys.executable, "-m", "pra_jax.sweep", f"--workdir={run}", "--num_images=10",
       f"--out_dir={tmp_path / 'out'}"], cwd=REPO, capture_output=True, text=True,
      env=dict(os.environ, PYTHONPATH=REPO, JAX_PLATFORMS="cpu"))
  assert proc.returncode == 2, proc.stderr[-3000:]
  lines = [l for l in proc.stderr.splitlines() if l.startswith("error: ")]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert "checkpoints/2 holds another model's state (" in lines[0], lines[0]
  assert "head" in lines[0] and "in the checkpoint" in lines[0], lines[0]   # Names the leaves.
  assert "no config key differs from the recorded run, so the code changed" in lines[0], lines[0]


def test_help_lists_the_knobs():
  out = subprocess.run([sys.executable, "-m", "pra_jax.sweep", "--help"], cwd=REPO,
                       capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  for flag in ("--cfg", "--temperature", "--num_steps", "--anneal", "--solver", "--schedule",
               "--weights", "--num_images", "--out_dir"):
    assert flag in out.stdout, out.stdout[-2000:]
