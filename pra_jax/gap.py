"""The train-inference gap of a trained run on held-out images (pra_jax/studies/rollout_gap.py says
what each number means).

  python -m pra_jax.gap --workdir=DIR
"""

from absl import app, flags
from ml_collections import config_flags

from pra_jax import cli, run_record
from pra_jax.studies import rollout_gap

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file of the trained run (default: the run's own, "
    "WORKDIR/config.json).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory with checkpoints.")
_OUTDIR = flags.DEFINE_string("outdir", None,
                              "Where the PNG, JSON and events go (default WORKDIR/gap).")
_NUM_IMAGES = flags.DEFINE_integer("num_images", None, "About this many held-out images, the "
                                   "same number per class (default: all).")
_NOISE_DRAWS = flags.DEFINE_integer("noise_draws", 16, "Flow-loss (t, eps) draws per position, "
                                    "rounded up to a multiple of head.num_draws.")
_NUM_ROLLOUTS = flags.DEFINE_integer("num_rollouts", 2, "Sampled-input draws per image.")
_KINDS = flags.DEFINE_list("kinds", list(rollout_gap.DEFAULT_KINDS), f"Input kinds, from {rollout_gap.KINDS} "
                           "(teacher and other are always measured).")
_SEED = flags.DEFINE_integer("seed", 0, "Key of every draw.")
_STEPS = flags.DEFINE_integer("steps", None, "Head ODE steps of the sampled kinds "
                              "(default config.sample.num_steps).")
_COUPLE_T0 = flags.DEFINE_float("couple_t0", 0.0, "rollout.couple_t0 of the sampled kinds: "
                                "0 = what inference feeds the model.")
_RAW_WEIGHTS = flags.DEFINE_bool("raw_weights", False, "Measure the raw weights, not the EMA.")


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  if _WORKDIR.value is None:
    cli.usage_error("--workdir is required")
  unknown = set(_KINDS.value) - set(rollout_gap.KINDS)
  if unknown:
    cli.usage_error(f"--kinds: {sorted(unknown)} unknown; expected names from "
                             f"{rollout_gap.KINDS}")
  for name, holder in (("num_images", _NUM_IMAGES), ("noise_draws", _NOISE_DRAWS),
                       ("num_rollouts", _NUM_ROLLOUTS), ("steps", _STEPS)):
    if holder.value is not None and holder.value < 1:
      cli.usage_error(f"--{name} must be a positive integer, got {holder.value}")
  if not 0.0 <= _COUPLE_T0.value <= 1.0:   # Also refuses nan.
    cli.usage_error(f"--couple_t0 must be a number in [0, 1], got {_COUPLE_T0.value}")
  with cli.user_input():
    config = run_record.config_or_recorded(_CONFIG.value, _WORKDIR.value)
  result, png = rollout_gap.run(config, _WORKDIR.value, outdir=_OUTDIR.value,
                        num_images=_NUM_IMAGES.value, noise_draws=_NOISE_DRAWS.value,
                        num_rollouts=_NUM_ROLLOUTS.value, seed=_SEED.value,
                        use_ema=not _RAW_WEIGHTS.value, kinds=tuple(_KINDS.value),
                        num_steps=_STEPS.value, couple_t0=_COUPLE_T0.value)
  kinds = [k for k in rollout_gap.KINDS if k in result]
  print(rollout_gap.summary_line(result))
  print("position    " + " ".join(f"{p:>6d}" for p in result["position"]))
  for k in kinds:
    print(f"{k:>11} " + " ".join(f"{v:6.3f}" for v in result[k]))
  print(f"wrote {png}")


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
