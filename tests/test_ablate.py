"""The ablation runner and the gap diagnostic end to end on the tiny config: a --quick study
writes its table and figure, a second invocation retrains and rescores nothing, a failing run is
reported while the rest goes on, and the gap CLI reads a trained run.

Whatever compiles runs in subprocesses at XLA's lowest optimisation level: at these sizes
compiling is nearly all the cost, and the level only changes floating-point rounding.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import tiny
from pra_jax.studies import input_mode_study as ablate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_PATCHES = 16  # configs/tiny.py: 16x16 digits in 4x4 patches.


def run_module(module, *args):
  """Runs `python -m module args` to its end: no wall-clock limit, which a loaded machine would
  trip (CI's own job limit still bounds it)."""
  env = dict(os.environ, PYTHONPATH=REPO,   # XLA_FLAGS: the conftest's fast-compile flags.
             # One compilation cache for all the subprocesses: the gap CLI below scores the
             # study's model with the study's settings, so it compiles nothing new.
             JAX_COMPILATION_CACHE_DIR=_CACHE_DIR, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                        capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-4000:]
  return proc.stdout


_CACHE_DIR = ""


@pytest.fixture(scope="module")
def study(tmp_path_factory):
  """A quick study: the method trained and scored, plus a sweep value equal to the base config
  (an alias of the same run). One run keeps the file within its time budget; the other modes
  differ only in config overrides, checked without training below."""
  global _CACHE_DIR
  _CACHE_DIR = str(tmp_path_factory.mktemp("jax_cache"))
  workdir = str(tmp_path_factory.mktemp("ablation"))
  args = ["--config=configs/tiny.py", f"--workdir={workdir}", "--quick", "--modes=pra",
          "--sigmas=1.0", "--state_dims=", "--probe_layers=1,-1"]
  first = run_module("pra_jax.ablate", *args)
  return workdir, args, first


def _table_rows(path, section=0):
  """Rows of the main table (section 0) or of the probe table (section 1), by run name."""
  with open(path) as f:
    text = f.read().split("## Linear probe")[section]
  lines = [line for line in text.splitlines() if line.startswith("| ")
           and not line.startswith("| **")]
  return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
          for line in lines[1:]}


def test_quick_study_writes_a_row_per_run_and_the_figure(study):
  workdir, _, stdout = study
  rows = _table_rows(os.path.join(workdir, "ablation.md"))
  assert set(rows) == {"real digits (train split)", "pra", "pra_sigma1 (= pra)"}
  seeds, steps, wall, acc, fd, teacher, sensitivity, lost_own, lost_free = rows["pra"][1:]
  assert seeds == "1" and steps == "3" and float(wall) > 0
  assert 0.0 <= float(acc) <= 1.0 and float(fd) >= 0.0
  assert float(teacher) > 0 and np.isfinite(float(sensitivity))
  # 3 steps teach nothing: the model ignores its prefix, so its 'lost' numbers are withheld.
  assert float(sensitivity) < ablate.MIN_SENSITIVITY and lost_own == lost_free == "n/a"
  assert "[ablate] pra: trained 3 steps" in stdout
  # The sigma sweep's 1.0 is the base config: the same run, not a retrained copy.
  assert rows["pra_sigma1 (= pra)"][1:] == rows["pra"][1:]
  assert not os.path.exists(os.path.join(workdir, "pra_sigma1"))
  with Image.open(os.path.join(workdir, "ablation.png")) as im:
    # One panel (the alias is shown once), 2 samples wide and 10 classes tall at twice the
    # 16-pixel size.
    assert 2 * 32 <= im.width < 2 * 2 * 32 and im.height >= 10 * 32


def test_probe_table_has_each_run_and_the_baselines(study):
  workdir, _, stdout = study
  rows = _table_rows(os.path.join(workdir, "ablation.md"), section=1)
  # The alias is probed once: its run folder is the same.
  assert "pra" in rows and "pra_sigma1" in rows
  seeds, block1, final = rows["pra"][:3]
  assert seeds == "1" and 0.0 <= float(block1) <= 1.0 and 0.0 <= float(final) <= 1.0
  with open(os.path.join(workdir, "probe_baselines.json")) as f:
    baselines = json.load(f)["top1"]
  assert set(baselines) == {"pixels", "untrained 1", "untrained -1"}
  assert "[ablate] pra: probe held-out top-1 block 1" in stdout
  with open(os.path.join(workdir, "pra", "ablate_probe.json")) as f:
    top1 = json.load(f)["top1"]
  assert set(top1) == {"1", "-1"} and abs(top1["1"] - float(block1)) <= 5e-4


def test_every_run_of_the_default_plan_is_a_valid_config():
  from pra_jax import config_check

  base = tiny.get_config()
  runs = ablate.plan(base)
  assert [r.name for r in runs] == [
      "teacher", "pixel_noise", "recon", "pra", "head_sample", "exact", "direct_x",
      "pra_sigma0.25", "pra_sigma0.5", "pra_sigma1", "pra_sigma2", "pra_z3", "pra_z4", "pra_z8"]
  configs = {r.name: ablate.run_config(base, r, 7) for r in runs}
  for name, c in configs.items():
    config_check.validate(c)
    assert c.train.num_steps == 7 and c.seed == base.seed, name
    assert c.train.sample_every == 0 and c.train.eval_every == 0, name
  direct = configs["direct_x"]
  assert direct.model.direct_pixel and direct.model.head.prediction == "x"
  assert direct.rollout.mode == "teacher"
  assert configs["pra_sigma0.25"].rollout.sigma_max == 0.25
  assert configs["pra_z8"].model.state.dim == 8
  # The sweep points equal to tiny's own pra settings (sigma_max 1, Z 4) train nothing new.
  same = lambda a, b: configs[a].to_json() == configs[b].to_json()
  assert same("pra_sigma1", "pra") and same("pra_z4", "pra") and not same("pra_z3", "pra")
  # Every mode but the sweeps is trained exactly as the base, bar its overrides.
  assert configs["exact"].model.to_json() == configs["teacher"].model.to_json()


def test_the_photos_study_plan():
  from configs import photos
  from pra_jax import config_check

  base = photos.get_config()
  runs = ablate.plan(base)
  names = [r.name for r in runs]
  # Teacher, recon, pra and direct_x at 3 seeds, the other modes at one, no sweeps: 16 runs.
  assert len(names) == 16 and "direct_v" in names and not any("sigma" in n for n in names)
  for mode in ("teacher", "recon", "pra", "direct_x"):
    group = [r for r in runs if r.base == mode]
    assert [r.seed for r in group] == [0, 1, 2] and group[0].name == mode
  configs = [ablate.run_config(base, r, 7) for r in runs]
  for c in configs:
    config_check.validate(c)
  assert sorted({c.seed for c in configs}) == [base.seed, base.seed + 1, base.seed + 2]
  direct_v = configs[names.index("direct_v")]
  assert direct_v.model.direct_pixel and direct_v.model.head.prediction == "v"
  assert base.model.patch_size ** 2 * base.data.channels == 192


def test_gap_outputs_have_one_value_per_position(study):
  workdir, _, _ = study
  for run in ("pra",):
    gap_dir = os.path.join(workdir, run, "gap")
    with open(os.path.join(gap_dir, "gap_step_0000003.json")) as f:
      result = json.load(f)
    for kind in ("teacher", "other", "head_sample", "exact"):
      assert len(result[kind]) == len(result[f"{kind}_stderr"]) == NUM_PATCHES
      assert np.all(np.isfinite(result[kind]))
      if kind != "teacher":
        # h_0 reads only the class token, and every kind shares the loss draws: position 0
        # agrees.
        assert result[f"ratio_{kind}"][0] == pytest.approx(1.0, abs=1e-6)
    assert result["sensitivity"] == pytest.approx(result["other_mean"] / result["teacher_mean"])
    assert os.path.getsize(os.path.join(gap_dir, "gap_step_0000003.png")) > 0
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(gap_dir))


def test_second_invocation_reuses_finished_runs(study):
  workdir, args, _ = study
  before = os.path.getmtime(os.path.join(workdir, "pra", "ablate_train.json"))
  stdout = run_module("pra_jax.ablate", *args)
  assert "trained 3 steps" not in stdout
  # The alias pra_sigma1 is the pra run itself: one run to reuse.
  assert stdout.count("not retrained") == 1 and stdout.count("scores reused") == 1
  assert os.path.getmtime(os.path.join(workdir, "pra", "ablate_train.json")) == before
  assert "pra_sigma1 (= pra)" in _table_rows(os.path.join(workdir, "ablation.md"))


def test_another_budget_in_the_same_workdir_is_refused(study):
  workdir, _, _ = study
  with pytest.raises(ValueError, match="budget of 3 steps, not 5"):
    ablate.run_study(tiny.get_config(), workdir, modes=("pra",), sigmas=(), state_dims=(),
                     num_steps=5, quick=True)


def test_a_run_of_another_config_in_the_same_workdir_is_refused(study):
  workdir, _, _ = study
  base = tiny.get_config()
  base.rollout.couple_t0 = 0.25   # e.g. a study of the uncoupled baselines in an old workdir.
  with pytest.raises(ValueError, match=r"another config \(differs in \['rollout.couple_t0'\]"):
    ablate.run_study(base, workdir, modes=("pra",), sigmas=(), state_dims=(), quick=True)


def test_gap_cli_on_a_trained_run(study, tmp_path):
  workdir, _, _ = study
  out = str(tmp_path / "gap")
  # The study's own gap settings (--quick: 10 images -> 2 per class, 1 draw, 2 head steps).
  stdout = run_module("pra_jax.gap", "--config=configs/tiny.py",
                      f"--workdir={os.path.join(workdir, 'pra')}", f"--outdir={out}",
                      "--num_images=10", "--noise_draws=1", "--num_rollouts=1", "--steps=2")
  assert "sensitivity other/teacher" in stdout and "lost_exact" in stdout
  with open(os.path.join(out, "gap_step_0000003.json")) as f:
    result = json.load(f)
  with open(os.path.join(workdir, "pra", "gap", "gap_step_0000003.json")) as f:
    in_study = json.load(f)
  assert result["num_images"] == 20 and len(result["head_sample"]) == NUM_PATCHES
  # Same model, key and settings: the CLI reproduces the study's numbers.
  for kind in ("other", "head_sample", "exact"):
    np.testing.assert_allclose(result[kind], in_study[kind], rtol=1e-6)
  with Image.open(os.path.join(out, "gap_step_0000003.png")) as im:
    assert im.size == (760, 580)


def test_a_failing_run_is_reported_and_the_rest_goes_on(study, tmp_path):
  workdir, _, _ = study
  shutil.copytree(os.path.join(workdir, "pra"), tmp_path / "pra")
  # Z=0 fails the config check before anything compiles; the trained pra run is reused.
  out = ablate.run_study(tiny.get_config(), str(tmp_path), modes=("pra",), sigmas=(),
                         state_dims=(0,), quick=True,
                         judge_cache=os.path.join(workdir, "judge_cache"))
  assert out["failed"] == ["pra_z0"]
  rows = _table_rows(out["table"])
  assert 0.0 <= float(rows["pra"][4]) <= 1.0  # Its digits accuracy, reused.
  assert "(failed: pra_z0: ValueError" in rows["pra_z0"][0] and "state.dim" in rows["pra_z0"][0]
  assert rows["pra_z0"][1] == "0"  # No seed of it scored.
  assert os.path.exists(out["figure"])


def test_the_existing_fixes_sweep_and_their_best_at_seeds():
  from configs import photos
  from pra_jax import config_check

  base = photos.get_config()
  runs = ablate.plan(base, modes=("pra", "direct_x_noise@0.3"), pixel_sigmas=(0.1, 0.3),
                     seeds=3, seeded_modes=("pra", "direct_x_noise@0.30"))
  names = [r.name for r in runs]
  # The spec listed in --modes and reached by the sweep is one run, seeded once.
  assert names == ["pra", "pra_seed1", "pra_seed2", "direct_x_noise_ps0.3",
                   "direct_x_noise_ps0.3_seed1", "direct_x_noise_ps0.3_seed2",
                   "pixel_noise_ps0.1", "direct_x_noise_ps0.1", "pixel_noise_ps0.3"]
  configs = {r.name: ablate.run_config(base, r, 7) for r in runs}
  for c in configs.values():
    config_check.validate(c)
  noised_x = configs["direct_x_noise_ps0.3"]
  assert noised_x.model.direct_pixel and noised_x.model.head.prediction == "x"
  assert noised_x.rollout.mode == "pixel_noise" and noised_x.rollout.pixel_sigma == 0.3
  assert configs["pixel_noise_ps0.3"].rollout.pixel_sigma == 0.3
  assert not configs["pixel_noise_ps0.3"].model.direct_pixel
  assert "pixel_sigma=0.3" in runs[names.index("pixel_noise_ps0.3")].changed
  # photos' own pixel_sigma is 0.1: that sweep point is the plain pixel_noise run's config.
  plain = ablate.run_config(base, ablate.mode_run("pixel_noise", base), 7)
  assert plain.to_json() == configs["pixel_noise_ps0.1"].to_json()
  for bad in ("pra@0.5", "pixel_noise@-1", "pixel_noise@x", "nope"):
    with pytest.raises(ValueError, match="pixel_sigma|unknown mode"):
      ablate.parse_mode(bad)
