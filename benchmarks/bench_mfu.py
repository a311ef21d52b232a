"""Model FLOPs utilisation of the train step: analytic FLOPs per second over the throughput that
jnp.dot reaches on the same machine, in the same run (timings interleaved).

  python benchmarks/bench_mfu.py --config=benchmarks/mid.py

The FLOP count and what it counts: benchmarks/_flops.py (matmuls only, backward as twice the
forward, no remat recomputation), cross-checked against XLA's `cost_analysis()` of the compiled
step. Target: MFU >= 40%. Prints one line.
"""

import time

import _common as C  # Puts the repository on sys.path.
import _flops
from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", "benchmarks/mid.py", "Config to time.")
_QUICK = flags.DEFINE_bool("quick", False, "One timed step, a small matmul (for the tests).")
_BATCH = flags.DEFINE_integer("batch", None, "Global batch (default: config train.batch_size).")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed train steps.")
_MATMUL = flags.DEFINE_integer("matmul", 2048, "Side of the square jnp.dot that sets the peak.")

TARGET = 0.40


def main(argv):
  del argv
  config = _CONFIG.value
  if _BATCH.value:
    config.train.batch_size = _BATCH.value
  quick = _QUICK.value
  t0 = time.perf_counter()
  r = _flops.measure(config, 1 if quick else _STEPS.value, 256 if quick else _MATMUL.value)
  f = r["flops"]
  tokens = (config.data.image_size // config.model.patch_size) ** 2
  parts = ", ".join(f"{k} {v / 1e9:.3g}" for k, v in f.items() if k != "total" and v)
  verdict = "met" if r["mfu"] >= TARGET else "MISSED"
  print(f"bench_mfu | {C.machine()} | config={C.config_name(flags.FLAGS['config'])} "
        f"width={config.model.backbone.width} depth={config.model.backbone.depth} "
        f"tokens={tokens} batch={r['batch']} mode={config.rollout.mode} dtype={r['dtype']} | "
        f"analytic {f['total'] / 1e9:.3g} GFLOP/step ({parts}); XLA cost_analysis "
        f"(unrolled) {r['xla_flops'] / 1e9:.3g} GFLOP ({r['xla_flops'] / f['total']:.2f}x) | step "
        f"{r['step_s'] * 1e3:.0f} ms = {r['achieved'] / 1e9:.1f} GFLOP/s, {r['images_per_s']:.2f} "
        f"images/s | jnp.dot {(_MATMUL.value if not quick else 256)}^2 {r['peak'] / 1e9:.1f} "
        f"GFLOP/s | MFU {100 * r['mfu']:.0f}% (target >= {100 * TARGET:.0f}% {verdict}) | "
        f"{time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
  app.run(main)
