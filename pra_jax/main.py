"""Trains a PRA model: python -m pra_jax.main --config=CONFIG --workdir=DIR [overrides]

  .venv/bin/python -m pra_jax.main --config=configs/demo.py --workdir=/tmp/pra_demo

--workdir is required: checkpoints, TensorBoard logs, sample grids and config.json go there, and
a rerun with the same workdir resumes. --config is a file in configs/ (demo.py by default;
tiny.py, pra_s.py, pra_b.py, pra_l.py). Any config field can be overridden on the command line
as --config.<section>.<field>=value, e.g.
  --config.train.num_steps=500 --config.rollout.mode=teacher --config.data.source=synthetic
Sections: data, model (.backbone, .head, .state), rollout, loss, train, eval, sharding,
checkpoint, sample. Every field, its default, its allowed values and whether a resume may
change it: python -m pra_jax.tools.config_fields (declared in pra_jax/config_schema.py). A
misspelled field is refused with the nearest names.

Entry point: flags, distributed runtime, versions and devices, then train.train_and_evaluate.
"""


import glob
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from pra_jax import distributed

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Config file of the run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, samples.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Allow a workdir whose checkpoints come from another model config.")
_DISTRIBUTED = distributed.define_flags()   # --distributed, --coordinator_address, ...


def _check_inputs():
  """Everything about the user's input that is known before jax or TensorFlow start."""
  from pra_jax import cli, config_check, data, run_record
  if _WORKDIR.value is None:
    cli.usage_error("--workdir is required (checkpoints, logs and samples go there)")
  heartbeat = _DISTRIBUTED["heartbeat_timeout"].value
  if heartbeat < 1:
    cli.usage_error(f"--heartbeat_timeout must be at least 1 s, got {heartbeat}")
  with cli.user_input():
    run_record.check_workdir_writable(_WORKDIR.value)
    config_check.validate(_CONFIG.value)
    run_record.check_workdir(_WORKDIR.value, _CONFIG.value, overwrite=_OVERWRITE.value)
    data.check_source(_CONFIG.value.data)   # Image folders: classes, one readable file.


def main(argv):   # Run through cli.one_line_errors, which also quiets the libraries' logs.
  if len(argv) > 1:
    from pra_jax import cli
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  _check_inputs()
  import tensorflow as tf  # CLU writes summaries with TF: keep it off the accelerators.
  tf.config.set_visible_devices([], "GPU")
  distributed.initialize_from_flags(_DISTRIBUTED)
  import flax
  import jax
  from pra_jax import train

  logging.info("jax %s, flax %s; process %d/%d; %d local / %d global devices: %s",
               jax.__version__, flax.__version__, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices()[:4])
  metrics = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)
  if jax.process_index() == 0:
    print(summary(_WORKDIR.value, _CONFIG.value, metrics), flush=True)
  from pra_jax import preemption
  if preemption.abandoned_native_work:  # See there: checkpoints and logs are closed by now.
    logging.flush()
    sys.stderr.flush()
    os._exit(0)  # pylint: disable=protected-access


def summary(workdir: str, config, metrics: dict) -> str:
  """Where the run put everything, and the commands that come next for this workdir: they read
  the run's config from workdir/config.json, so they work as printed, overrides included."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  steps = sorted(int(n) for n in os.listdir(ckpt_dir) if n.isdigit()) if os.path.isdir(
      ckpt_dir) else []
  grids = sorted(glob.glob(os.path.join(workdir, "samples", "step_*.png")))
  lines = [f"Run in {workdir}:",
           f"  checkpoints  {ckpt_dir} (steps {', '.join(map(str, steps)) or 'none'})",
           f"  sample grid  {grids[-1] if grids else 'none (train.sample_every = 0)'}",
           f"  config       {os.path.join(workdir, 'config.json')}; parameters "
           f"{os.path.join(workdir, 'params.txt')}",
           f"  dashboards   {os.path.join(workdir, 'events.out.tfevents.*')}"]
  scores = {k: v for k, v in metrics.items() if k.startswith("eval/")}
  if "eval/digits_accuracy" in scores:
    lines.append(f"  evaluation   {100 * scores['eval/digits_accuracy']:.1f}% of samples recognised "
                 f"as the requested digit, FD {scores['eval/digits_fd']:.2f} on "
                 f"{int(scores['eval/digits_num_images'])} samples")
  metric = " --metrics=digits" if config.data.source == "digits" else (
      " --ref=REF.npz --inception=inception_fid.npz")
  out = os.path.join(workdir, "samples.npz")
  lines += ["Next:",
            f"  .venv/bin/python -m pra_jax.sample --workdir={workdir} --num_images=100 "
            f"--out={out}",
            f"  .venv/bin/python -m pra_jax.evaluate --samples={out}{metric}",
            f"  .venv/bin/tensorboard --logdir={workdir}"]
  return "\n".join(lines)


if __name__ == "__main__":
  from pra_jax import cli
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
