"""Trains a PRA model: python -m pra_jax.main --config=CONFIG --workdir=DIR [overrides]

  .venv/bin/python -m pra_jax.main --config=configs/demo.py --workdir=/tmp/pra_demo

--workdir is required: checkpoints, TensorBoard logs, sample grids and config.json go there, and
a rerun with the same workdir resumes. --config is a file in configs/ (demo.py by default;
tiny.py, pra_s.py, pra_b.py, pra_l.py). Any config field can be overridden on the command line
as --config.<section>.<field>=value, e.g.
  --config.train.num_steps=500 --config.rollout.mode=teacher --config.data.source=synthetic
Sections: data, model (.backbone, .head, .state), rollout, loss, train, eval, sharding,
checkpoint, sample. Every field, its default and its allowed values: configs/common.py. A
misspelled field is refused with the nearest names.

Entry point: flags, distributed runtime, versions and devices, then train.train_and_evaluate.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

from pra_jax import quiet

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Config file of the run.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, logs, samples.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False,
                               "Allow a workdir whose checkpoints come from another model config.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "jax.distributed.initialize(): 'auto' when a cluster is detected or a coordinator is given.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_HEARTBEAT = flags.DEFINE_integer(
    "heartbeat_timeout", 30,
    "Seconds without a heartbeat after which jax.distributed declares a process dead (JAX's "
    "default is 100): bounds how long survivors of a lost peer wait before they exit.")

# Variables by which TPU pods, SLURM and Open MPI announce a multi-process job to JAX.
_CLUSTER_ENV = ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
                "JAX_COORDINATOR_ADDRESS")


def _initialize_distributed():
  import jax

  explicit = _COORDINATOR.value is not None
  detected = any(int(os.environ.get(v, "1") or 1) > 1 if v.endswith(("NTASKS", "SIZE"))
                 else v in os.environ for v in _CLUSTER_ENV)
  if _DISTRIBUTED.value == "on" or (_DISTRIBUTED.value == "auto" and (explicit or detected)):
    jax.distributed.initialize(coordinator_address=_COORDINATOR.value,
                               num_processes=_NUM_PROCESSES.value, process_id=_PROCESS_ID.value,
                               heartbeat_timeout_seconds=_HEARTBEAT.value)


def _check_inputs():
  """Everything about the user's input that is known before jax or TensorFlow start."""
  from pra_jax import checkpoint, config_check
  if _WORKDIR.value is None:
    config_check.usage_error("--workdir is required (checkpoints, logs and samples go there)")
  if _HEARTBEAT.value < 1:
    config_check.usage_error(f"--heartbeat_timeout must be at least 1 s, got {_HEARTBEAT.value}")
  with config_check.user_input():
    config_check.validate(_CONFIG.value)
    checkpoint.check_workdir(_WORKDIR.value, _CONFIG.value, overwrite=_OVERWRITE.value)


def main(argv):
  quiet.quiet_library_logs()
  if len(argv) > 1:
    from pra_jax import config_check
    config_check.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  _check_inputs()
  import tensorflow as tf  # CLU writes summaries with TF: keep it off the accelerators.
  tf.config.set_visible_devices([], "GPU")
  _initialize_distributed()
  import flax
  import jax
  from pra_jax import train

  logging.info("jax %s, flax %s; process %d/%d; %d local / %d global devices: %s",
               jax.__version__, flax.__version__, jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices()[:4])
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, overwrite=_OVERWRITE.value)


if __name__ == "__main__":
  from pra_jax import config_check
  app.run(config_check.cli(main), flags_parser=config_check.parse_flags)
