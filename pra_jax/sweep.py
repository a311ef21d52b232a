"""The sampler sweep to run before reporting a number: every combination of the given knobs,
each scored on the same images (the run's judge: FID/sFID/IS against config.eval's reference
batch, or the digits / photos judge), as a table, a plot and a resumable JSON.

  python -m pra_jax.sweep --workdir=DIR --cfg=1.0,1.5,2.0,3.0   # the run's own config.json

One restore per weights and one compile per batch shape (cfg, temperature and head steps are
run-time arguments; solver, cfg schedule and guidance on/off compile apart). A rerun with the
same run, step, seed and image count skips the points already in OUT_DIR/sweep.json. Prints the
best point (lowest FID / FD) and the command that samples the full 50 per class at it.
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from pra_jax import checkpoint, cli, config_check, run_record
from pra_jax.sampling import knob_sweep

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file of the run (default: the run's own WORKDIR/config.json, with "
    "every override it trained with).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with checkpoints.")
_OUT_DIR = flags.DEFINE_string("out_dir", None, "Where sweep.json / .md / .png go (default: "
                               "WORKDIR/sweep).")
_CFGS = flags.DEFINE_list("cfg", None, "Guidance scales (default: config.sample.cfg).")
_TEMPERATURES = flags.DEFINE_list("temperature", None,
                                  "Head noise temperatures (default: config.sample.temperature).")
_STEPS = flags.DEFINE_list("num_steps", None, "Head ODE steps per patch (default: config's).")
_MIN_STEPS = flags.DEFINE_list(
    "anneal", None, "Step annealing floors: head steps fall linearly to this at the last patch; "
    "0 = off (default: config.sample.min_steps).")
_SOLVERS = flags.DEFINE_list("solver", None, "Head ODE solvers, euler / heun (default: config's).")
_SCHEDULES = flags.DEFINE_list("schedule", None,
                               "cfg schedules, constant / linear (default: config's).")
_WEIGHTS = flags.DEFINE_list(
    "weights", ["ema"], "Which weights: ema (train.ema_decay), ema_1, ema_2, ... (the run's "
    "train.ema_decays, in order) and/or raw.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 1000, "Images per point (classes balanced).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (image k draws from (seed, k)).")
_PER_DEVICE_BATCH = flags.DEFINE_integer(
    "per_device_batch", None, "Images per device per call (default: config.sample.batch_size).")
_CHECKPOINT_STEP = flags.DEFINE_integer("checkpoint_step", None,
                                        "Checkpoint to sweep (default: the newest).")


def _values(flag, default, kind, name):
  raw = flag.value if flag.value is not None else [default]
  try:
    return [kind(v) for v in raw]
  except ValueError:
    raise ValueError(f"--{name} must be a comma-separated list of {kind.__name__} values, got "
                     f"{','.join(map(str, raw))!r}") from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required")
  workdir = _WORKDIR.value
  with cli.user_input():  # Every value checked before anything is restored.
    config = run_record.config_or_recorded(_CONFIG.value, workdir)
    sp = config.sample
    config_check.validate(config)
    run_record.check_readable(workdir, config)
    points = knob_sweep.grid(
        weights=_WEIGHTS.value, cfg=_values(_CFGS, sp.cfg, float, "cfg"),
        temperature=_values(_TEMPERATURES, sp.temperature, float, "temperature"),
        num_steps=_values(_STEPS, sp.num_steps, int, "num_steps"),
        min_steps=_values(_MIN_STEPS, sp.min_steps, int, "anneal"),
        solver=_values(_SOLVERS, sp.solver, str, "solver"),
        cfg_schedule=_values(_SCHEDULES, sp.cfg_schedule, str, "schedule"),
        known_weights=tuple(knob_sweep.weights_names(config)))
    if not points:
      raise ValueError("no point to sweep: every --anneal floor exceeds every --num_steps")
    config_check.check_number("--num_images", _NUM_IMAGES.value, 1, float("inf"))
    ckpt = checkpoint.Checkpointer(workdir, config.checkpoint, read_only=True)
    available = ckpt.all_steps()
    if not available:
      raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: train first")
    step = available[-1] if _CHECKPOINT_STEP.value is None else _CHECKPOINT_STEP.value
    if step not in available:
      raise ValueError(f"--checkpoint_step={step}: {ckpt.directory} holds steps {available}")
  out_dir = _OUT_DIR.value or os.path.join(workdir, "sweep")
  command = ["python", "-m", "pra_jax.sweep"] + sys.argv[1:]
  result = knob_sweep.run(
      config, workdir, out_dir, points, num_images=_NUM_IMAGES.value, seed=_SEED.value,
      per_device_batch=_PER_DEVICE_BATCH.value or sp.batch_size, step=step, command=command)
  best = result["best"]
  name, value = knob_sweep.primary(best["metrics"])
  logging.info("jax %s, %d devices.", jax.__version__, jax.device_count())
  print(open(os.path.join(out_dir, "sweep.md")).read())
  print(f"best by {name}: {best['name']} ({value:.3f}); table, plot and JSON in {out_dir}")
  print("sample the full 50 per class there with:")
  print("  " + knob_sweep.best_command(best, workdir, step, _SEED.value))


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
