"""Model FLOPs utilisation of the train step: analytic FLOPs per second over the best rate of a
standalone jnp.dot sweep (several sizes, timed in this process before the step is built).

  python benchmarks/bench_mfu.py --config=benchmarks/mid.py

The peak is the sweep's best, not a product timed between train steps: interleaved with the
step, a 2048^2 jnp.dot reads well below what the same product reaches alone (on the 2-core CPU
machine ~133 against 180-260 GFLOP/s), and dividing by that low figure inflates the MFU. The
interleaved rate is still printed beside the sweep, with the MFU against each.

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
_MATMUL = flags.DEFINE_integer("matmul", 2048, "Side of the square jnp.dot timed between steps.")
_SWEEP = flags.DEFINE_list("sweep", ["512", "1024", "2048", "3072", "4096"],
                           "Sides of the standalone jnp.dot sweep whose best rate is the peak.")

TARGET = 0.40


def main(argv):
  del argv
  config = _CONFIG.value
  if _BATCH.value:
    config.train.batch_size = _BATCH.value
  quick = _QUICK.value
  matmul = 256 if quick else _MATMUL.value
  sizes = (128, 256) if quick else tuple(int(v) for v in _SWEEP.value)
  t0 = time.perf_counter()
  r = _flops.measure(config, 1 if quick else _STEPS.value, matmul, sweep_sizes=sizes)
  f = r["flops"]
  tokens = (config.data.image_size // config.model.patch_size) ** 2
  parts = ", ".join(f"{k} {v / 1e9:.3g}" for k, v in f.items() if k != "total" and v)
  verdict = "met" if r["mfu"] >= TARGET else "MISSED"
  sweep = r["sweep"]
  rates = " ".join(f"{n}:{v / 1e9:.0f}" for n, v in sweep["rates"].items())
  print(f"bench_mfu | {C.machine()} | config={C.config_name(flags.FLAGS['config'])} "
        f"width={config.model.backbone.width} depth={config.model.backbone.depth} "
        f"tokens={tokens} batch={r['batch']} mode={config.rollout.mode} dtype={r['dtype']} | "
        f"analytic {f['total'] / 1e9:.3g} GFLOP/step ({parts}); XLA cost_analysis "
        f"(unrolled) {r['xla_flops'] / 1e9:.3g} GFLOP ({r['xla_flops'] / f['total']:.2f}x) | step "
        f"{r['step_s'] * 1e3:.0f} ms = {r['achieved'] / 1e9:.1f} GFLOP/s, {r['images_per_s']:.2f} "
        f"images/s | peak: jnp.dot sweep alone best {sweep['best'] / 1e9:.1f} GFLOP/s at "
        f"{sweep['size']}^2 ({rates}); interleaved {matmul}^2 {r['interleaved_dot'] / 1e9:.1f} "
        f"GFLOP/s (MFU against it {100 * r['achieved'] / r['interleaved_dot']:.0f}%) | "
        f"MFU {100 * r['mfu']:.0f}% (target >= {100 * TARGET:.0f}% {verdict}) | "
        f"{time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
  app.run(main)
