"""jax.distributed for the command-line programs: the flags, and when to call initialize().

TPU pods, SLURM and Open MPI announce a multi-process job in the environment and
jax.distributed.initialize() finds its peers from it; elsewhere (several processes on one
machine, a hand-made cluster) the coordinator, process count and process id are given.
"""

import os

from absl import flags

# Variables by which TPU pods, SLURM and Open MPI announce a multi-process job to JAX.
CLUSTER_ENV = ("TPU_WORKER_HOSTNAMES", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE",
               "JAX_COORDINATOR_ADDRESS")


def define_flags() -> dict:
  """--distributed, --coordinator_address, --num_processes, --process_id."""
  return {
      "distributed": flags.DEFINE_enum(
          "distributed", "auto", ["auto", "on", "off"],
          "jax.distributed.initialize(): 'auto' when a cluster is detected or a coordinator is "
          "given."),
      "coordinator_address": flags.DEFINE_string("coordinator_address", None,
                                                 "host:port of process 0."),
      "num_processes": flags.DEFINE_integer("num_processes", None, "Processes in the job."),
      "process_id": flags.DEFINE_integer("process_id", None, "This process's index."),
      "heartbeat_timeout": flags.DEFINE_integer(
          "heartbeat_timeout", 30,
          "Seconds without a heartbeat after which jax.distributed declares a process dead "
          "(JAX's default is 100): bounds how long survivors of a lost peer wait before they "
          "exit."),
  }


def cluster_detected(environ=None) -> bool:
  environ = os.environ if environ is None else environ
  return any(int(environ.get(v, "1") or 1) > 1 if v.endswith(("NTASKS", "SIZE"))
             else v in environ for v in CLUSTER_ENV)


def initialize(mode: str, coordinator_address=None, num_processes=None, process_id=None,
               heartbeat_timeout: int = 30) -> None:
  """Joins the job's other processes when `mode` is 'on', or 'auto' with a cluster in sight."""
  import jax

  explicit = coordinator_address is not None
  if mode == "on" or (mode == "auto" and (explicit or cluster_detected())):
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout)


def initialize_from_flags(defined: dict) -> None:
  initialize(defined["distributed"].value, defined["coordinator_address"].value,
             defined["num_processes"].value, defined["process_id"].value,
             defined["heartbeat_timeout"].value)
