"""A projection, not a measurement: wall time of sampling 50K images on accelerators, from the
sampler's analytic FLOPs (benchmarks/_flops.sample_flops) and a stated utilisation of each
chip's dense bf16 peak.

  python benchmarks/project_sampling.py --config=configs/pra_l.py [--utilisation=0.4]

Uses the config's sampler settings (sample.num_steps head steps, sample.solver, CFG when
sample.cfg != 1). Peaks: H100 SXM 989 TFLOP/s dense bf16 (NVIDIA's datasheet gives 1,979 with
2:4 sparsity, half that dense); TPU v5p 459 TFLOP/s bf16 per chip (Cloud TPU v5p docs), and a
v5p-N slice has N TensorCores, 2 per chip, so v5p-64 is 32 chips. What the projection leaves
out: KV-cache reads (at batch 1 a token step is memory-bound; the utilisation only holds at
batches large enough to be compute-bound), the Inception evaluation, host I/O, and compile.
Prints a markdown table.
"""

import _common as C  # noqa: F401  Puts the repository on sys.path.
import _flops
from absl import app, flags
from ml_collections import config_flags


_CONFIG = config_flags.DEFINE_config_file("config", "configs/pra_l.py",
                                          "Model and sampler settings.")
_UTILISATION = flags.DEFINE_float("utilisation", 0.40,
                                  "Assumed share of the bf16 dense peak reached.")
_NUM_IMAGES = flags.DEFINE_integer("num_images", 50_000, "Images to generate.")


def _duration(seconds: float) -> str:
  return f"{seconds / 60:.1f} min" if seconds < 3600 else f"{seconds / 3600:.2f} h"


def main(argv):
  del argv
  config, util, num = _CONFIG.value, _UTILISATION.value, _NUM_IMAGES.value
  f, rows = _flops.projection(config, util, num)
  sp, b = config.sample, config.model.backbone
  tokens = (config.data.image_size // config.model.patch_size) ** 2
  parts = ", ".join(f"{k} {v / 1e12:.3g}" for k, v in f.items() if k != "total")
  print(f"PROJECTION (not measured): {num:,} images, config={C.config_name(flags.FLAGS['config'])} "
        f"(width {b.width}, depth {b.depth}, {tokens} tokens), {sp.num_steps} {sp.solver} head "
        f"steps, CFG {sp.cfg} ({'2 rows' if sp.cfg != 1.0 else '1 row'}), at {100 * util:.0f}% "
        f"of the bf16 dense peak")
  print(f"per image: {f['total'] / 1e12:.3g} TFLOP ({parts}); all images: "
        f"{num * f['total'] / 1e18:.3g} EFLOP")
  print()
  print("| machine | chips | bf16 dense peak per chip | projected wall time |")
  print("|---|---|---|---|")
  for name, chips, peak, seconds in rows:
    print(f"| {name} | {chips} | {peak / 1e12:.0f} TFLOP/s | {_duration(seconds)} |")


if __name__ == "__main__":
  app.run(main)
