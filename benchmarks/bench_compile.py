"""Compile time of the train step with the layer stack scanned (backbone.scan_layers) or unrolled.

  python benchmarks/bench_compile.py --config=configs/pra_l.py

What is compiled: train_step.train_step exactly as train_and_evaluate jits it (state donated, its
shardings fixed), lowered on abstract inputs (nothing allocated) for one device at a small
global batch: the batch changes buffer sizes, not the program XLA has to compile. Both
variants are compiled in the same process, unrolled first, so the scanned one gains no warm
cache. Prints one line.
"""

import time

import _common as C  # Puts the repository on sys.path.
import jax
from absl import app, flags
from ml_collections import config_flags

from pra_jax import sharding, train_step

_CONFIG = config_flags.DEFINE_config_file("config", "configs/pra_l.py", "Config to compile.")
_QUICK = flags.DEFINE_bool("quick", False, "Accepted for uniformity; use a small --config.")
_BATCH = flags.DEFINE_integer("batch", 2, "Global batch of the abstract inputs.")


def main(argv):
  del argv
  config = _CONFIG.value
  config.train.batch_size = _BATCH.value
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  times = {}
  for scan in (False, True):
    config.model.backbone.scan_layers = scan
    t0 = time.perf_counter()
    _, _, lower_s, compile_s = train_step.compile_train_step(config, mesh, _BATCH.value)
    times[scan] = (lower_s, compile_s, time.perf_counter() - t0)
  b = config.model.backbone
  on, off = times[True], times[False]
  print(f"bench_compile | {C.machine()} | config={C.config_name(flags.FLAGS['config'])} "
        f"depth={b.depth} width={b.width} remat={b.remat_policy} dtype={b.dtype}, train step on "
        f"1 device, batch {_BATCH.value}, abstract inputs | scan_layers on: trace+lower "
        f"{on[0]:.1f} s + compile {on[1]:.1f} s = {on[2]:.1f} s; off: {off[0]:.1f} s + "
        f"{off[1]:.1f} s = {off[2]:.1f} s; unrolled/scanned {off[2] / on[2]:.1f}x", flush=True)


if __name__ == "__main__":
  app.run(main)
