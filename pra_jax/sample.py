"""Sampling from a trained run: ADM-format .npz plus a PNG grid (one row per class).

  python -m pra_jax.sample --config=configs/demo.py --workdir=DIR --out=s.npz   # 50 per class

Data-parallel over every device of every process (the same command on each host; see the
README's "Sampling at scale"), resumable chunk by chunk, and image k depends only on (seed, k):
neither the batch size nor the device or process count changes it (pra_jax/resumable_job.py).
"""

import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from pra_jax import config_check, distributed

from pra_jax.sampling import resumable_job

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file of the run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with checkpoints.")
_NUM_IMAGES = flags.DEFINE_integer(
    "num_images", None,
    f"Images to generate (default: {resumable_job.PER_CLASS} per class, ADM's protocol).")
_OUT = flags.DEFINE_string("out", None, "Output .npz (ADM format); a PNG grid beside it.")
_CFG = flags.DEFINE_float("cfg", None, "Guidance scale (default: config.sample.cfg).")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Head noise temperature.")
_STEPS = flags.DEFINE_integer("steps", None, "Head ODE steps per patch.")
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
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None or _WORKDIR.value is None or _OUT.value is None:
    raise app.UsageError("--config, --workdir and --out are required")
  if not _OUT.value.endswith(".npz"):
    raise app.UsageError(f"--out must name a .npz file, got {_OUT.value}")
  with config_check.user_input():  # Before anything compiles.
    if _NUM_IMAGES.value is not None:   # None: 50 per class (ADM's protocol).
      config_check.check_number("--num_images", _NUM_IMAGES.value, 1, float("inf"))
    if _CFG.value is not None:
      config_check.check_number("--cfg", _CFG.value, 0.0, float("inf"))
  distributed.initialize_from_flags(_DISTRIBUTED)
  logging.info("jax %s; process %d/%d; %d local / %d global devices.", jax.__version__,
               jax.process_index(), jax.process_count(), jax.local_device_count(),
               jax.device_count())
  result = resumable_job.sample_to_npz(
      _CONFIG.value, _WORKDIR.value, _OUT.value, num_images=_NUM_IMAGES.value,
      classes=[int(c) for c in _CLASSES.value] if _CLASSES.value else None, seed=_SEED.value,
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


if __name__ == "__main__":
  app.run(config_check.cli(main), flags_parser=config_check.parse_flags)
