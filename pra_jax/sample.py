"""Sampling from a trained run: ADM-format .npz plus a PNG grid (one row per class).

  python -m pra_jax.sample --workdir=DIR --out=s.npz   # 50 per class, the run's own config

Data-parallel over every device of every process (the same command on each host; see the
README's "Sampling at scale"), resumable chunk by chunk, and image k depends only on (seed, k):
neither the batch size nor the device or process count changes it (pra_jax/resumable_job.py).
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from pra_jax import cli, config_check, distributed, run_record
from pra_jax.sampling import resumable_job

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file of the run (default: the run's own, WORKDIR/config.json).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with checkpoints.")
_NUM_IMAGES = flags.DEFINE_integer(
    "num_images", None,
    f"Images to generate (default: {resumable_job.PER_CLASS} per class, ADM's protocol).")
_OUT = flags.DEFINE_string("out", None, "Output .npz (ADM format); a PNG grid beside it.")
_CFG = flags.DEFINE_float("cfg", None, "Guidance scale (default: config.sample.cfg).")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Head noise temperature.")
_STEPS = flags.DEFINE_integer("steps", None, "Head ODE steps per patch.")
# The sweep's other knobs, so that its best point is one command (pra_jax.sweep prints it).
_ANNEAL = flags.DEFINE_integer("anneal", None,
                               "sample.min_steps: step annealing's floor (0 = off).")
_SOLVER = flags.DEFINE_string("solver", None, "sample.solver: euler / heun.")
_SCHEDULE = flags.DEFINE_string("schedule", None, "sample.cfg_schedule: constant / linear.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_CLASSES = flags.DEFINE_list("classes", None, "Class ids to sample (default: all, cycled).")
_RAW_WEIGHTS = flags.DEFINE_bool("raw_weights", False, "Sample raw weights, not the EMA.")
_WEIGHTS = flags.DEFINE_string("weights", None, "ema_1, ema_2, ...: one of the run's "
                               "train.ema_decays EMAs instead of the train.ema_decay one.")
_PER_DEVICE_BATCH = flags.DEFINE_integer(
    "per_device_batch", None, "Images per device per call (default: config.sample.batch_size).")
_CHUNK_SIZE = flags.DEFINE_integer(
    "chunk_size", None,
    "Images per committed chunk (default: the chunk folder's, else one global batch).")
_CHUNK_DIR = flags.DEFINE_string(
    "chunk_dir", None, "Folder of the resumable chunks, shared by all processes (default: "
    "--out without .npz, plus _chunks).")
_CHECKPOINT_STEP = flags.DEFINE_integer("checkpoint_step", None,
                                        "Checkpoint to sample (default: the newest).")
_DISTRIBUTED = distributed.define_flags()   # --distributed, --coordinator_address, ...


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  if _WORKDIR.value is None or _OUT.value is None:
    cli.usage_error("--workdir and --out are required")
  if not _OUT.value.endswith(".npz"):
    cli.usage_error(f"--out={_OUT.value}: expected a path ending in .npz")
  with cli.user_input():  # Before anything compiles.
    config = run_record.config_or_recorded(_CONFIG.value, _WORKDIR.value)
    for key, value in (("min_steps", _ANNEAL.value), ("solver", _SOLVER.value),
                       ("cfg_schedule", _SCHEDULE.value)):
      if value is not None:   # Checked with the rest of the config just below.
        config.sample[key] = value
    for name, value in (("--num_images", _NUM_IMAGES.value), ("--steps", _STEPS.value),
                        ("--per_device_batch", _PER_DEVICE_BATCH.value),
                        ("--chunk_size", _CHUNK_SIZE.value)):
      if value is not None:   # --num_images None: 50 per class (ADM's protocol).
        config_check.check_number(name, value, 1, float("inf"))
    for name, value in (("--cfg", _CFG.value), ("--temperature", _TEMPERATURE.value)):
      if value is not None:
        config_check.check_number(name, value, 0.0, float("inf"))
    config_check.validate(config)
    classes = _classes(config.data.num_classes)
    run_record.check_readable(_WORKDIR.value, config)
  distributed.initialize_from_flags(_DISTRIBUTED)
  logging.info("jax %s; process %d/%d; %d local / %d global devices.", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  result = resumable_job.sample_to_npz(
      config, _WORKDIR.value, _OUT.value, num_images=_NUM_IMAGES.value,
      classes=classes, seed=_SEED.value,
      cfg=_CFG.value, temperature=_TEMPERATURE.value, steps=_STEPS.value,
      use_ema=_WEIGHTS.value or not _RAW_WEIGHTS.value, per_device_batch=_PER_DEVICE_BATCH.value,
      chunk_size=_CHUNK_SIZE.value, chunk_dir=_CHUNK_DIR.value,
      checkpoint_step=_CHECKPOINT_STEP.value)
  plan = result["plan"]
  if result["preempted"]:
    print(f"preempted: rerun the same command to finish {plan.chunk_dir}")
    sys.exit(resumable_job.EXIT_PREEMPTED)
  if jax.process_index() == 0:
    print(f"wrote {len(plan.labels_X)} images (step {plan.step}, {plan.settings}) to {plan.out} "
          f"and {plan.png}")


def _classes(num_classes: int) -> list[int] | None:
  if not _CLASSES.value:
    return None
  try:
    classes = [int(c) for c in _CLASSES.value]
  except ValueError:
    raise ValueError(f"--classes={','.join(_CLASSES.value)}: expected class ids, integers in "
                     f"[0, {num_classes})") from None
  bad = [c for c in classes if not 0 <= c < num_classes]
  if bad:
    raise ValueError(f"--classes: {bad} are not class ids; expected integers in "
                     f"[0, {num_classes}) (data.num_classes)")
  return classes


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
