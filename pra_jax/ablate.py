r"""The ablation study: every backbone input mode and the direct-pixel baselines at one budget
(pra_jax/studies/input_mode_study.py runs it and says how it is scored).

  python -m pra_jax.ablate --config=configs/demo.py --workdir=/tmp/pra_ablation
  python -m pra_jax.ablate --config=configs/photos.py --workdir=/tmp/pra_photos_study

The existing fixes at their best (photos): sweep the strength of pixel-space input noise, alone
(pixel_noise) and with x-prediction (direct_x_noise), then run the best of each at 3 seeds beside
pra and at a longer budget, naming a mode at a strength as MODE@PIXEL_SIGMA:

  python -m pra_jax.ablate --config=configs/photos.py --workdir=/tmp/pra_fixes \
      --modes=pra --pixel_sigmas=0.1,0.3,0.5,1.0 --seeded_modes=
  python -m pra_jax.ablate --config=configs/photos.py --workdir=/tmp/pra_fixes \
      --modes=pra,pixel_noise@0.5,direct_x_noise@0.3 --pixel_sigmas=0.1,0.3,0.5,1.0 \
      --seeds=3 --seeded_modes=pra,pixel_noise@0.5,direct_x_noise@0.3
  python -m pra_jax.ablate --config=configs/photos.py --workdir=/tmp/pra_fixes_1000 \
      --num_steps=1000 --modes=pra,exact,direct_x_noise@0.3 --seeds=3 \
      --seeded_modes=pra,exact,direct_x_noise@0.3
"""

import dataclasses
import logging as std_logging

from absl import app, flags, logging
from ml_collections import config_flags

from pra_jax import cli, config_check, run_record
from pra_jax.studies import input_mode_study as A

# Unset flags take the data source's default study (input_mode_study.STUDIES).
_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Base config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Study directory: one subfolder per run.")
_QUICK = flags.DEFINE_bool("quick", False, f"{A.QUICK_STEPS} steps a run and a handful of "
                           "samples: a smoke test of the whole study.")
_MODES = flags.DEFINE_list("modes", None, f"Input modes to train, from {A.MODES}; "
                           f"{' and '.join(A.PIXEL_SIGMA_MODES)} also as MODE@PIXEL_SIGMA, "
                           "e.g. pixel_noise@0.5 (rollout.pixel_sigma=0.5).")
_SEEDS = flags.DEFINE_integer("seeds", None, "Seeds of each mode in --seeded_modes.")
_SEEDED_MODES = flags.DEFINE_list("seeded_modes", None,
                                  "Modes (as in --modes) trained at --seeds seeds ('' = none).")
_PIXEL_SIGMAS = flags.DEFINE_list(
    "pixel_sigmas", None, f"rollout.pixel_sigma values at which to train each of "
    f"{A.PIXEL_SIGMA_MODES} ('' = none): the existing fixes' strength sweep.")
_SIGMAS = flags.DEFINE_list("sigmas", None,
                            "PRA rollout.sigma_max values of the sweep ('' = none).")
_STATE_DIMS = flags.DEFINE_list("state_dims", None,
                                "PRA model.state.dim values of the sweep ('' = none).")
_NUM_STEPS = flags.DEFINE_integer("num_steps", None, "Training steps of every run (default: the "
                                  f"study's; --quick {A.QUICK_STEPS}).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "Samples scored per run.")
_PROBE_LAYERS = flags.DEFINE_list(
    "probe_layers", None, "Backbone blocks to probe linearly in every run (e.g. 2,-1: the middle "
    "of a 4-deep backbone and the final output), beside raw pixels and an untrained backbone.")
_JUDGE_CACHE = flags.DEFINE_string("judge_cache", None,
                                   "Judge cache (default WORKDIR/judge_cache).")


def _quiet_checkpoint_logs():
  """Orbax logs each file it writes; twelve runs of that bury the study's own lines."""
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname)


def _list(values, kind, flag):
  if values is None:
    return None
  try:
    return tuple(kind(v) for v in values if v)
  except ValueError:
    raise ValueError(f"--{flag}={','.join(values)}: expected comma-separated "
                     f"{kind.__name__} values") from None


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  if _WORKDIR.value is None:
    cli.usage_error("--workdir is required")
  for name, holder in (("modes", _MODES), ("seeded_modes", _SEEDED_MODES)):
    for spec in holder.value or ():
      if spec:
        try:
          A.parse_mode(spec)
        except ValueError as e:
          cli.usage_error(f"--{name}: {e}")
  for name, holder in (("seeds", _SEEDS), ("num_steps", _NUM_STEPS), ("num_samples", _NUM_SAMPLES)):
    if holder.value is not None and holder.value < 1:
      cli.usage_error(f"--{name} must be a positive integer, got {holder.value}")
  with cli.user_input():   # Every run's config and folder, before anything trains.
    run_record.check_workdir_writable(_WORKDIR.value)
    config_check.validate(_CONFIG.value)
    runs = dict(modes=_list(_MODES.value, str, "modes"),
                sigmas=_list(_SIGMAS.value, float, "sigmas"),
                pixel_sigmas=_list(_PIXEL_SIGMAS.value, float, "pixel_sigmas"),
                state_dims=_list(_STATE_DIMS.value, int, "state_dims"), seeds=_SEEDS.value,
                seeded_modes=_list(_SEEDED_MODES.value, str, "seeded_modes"),
                num_steps=_NUM_STEPS.value, quick=_QUICK.value)
    A.check_study(_CONFIG.value, _WORKDIR.value, validate=True, **runs)
    probe_layers = _list(_PROBE_LAYERS.value, int, "probe_layers") or ()
    depth = _CONFIG.value.model.backbone.depth
    if any(not -depth <= l < depth for l in probe_layers):
      raise ValueError(f"--probe_layers={','.join(map(str, probe_layers))}: expected blocks "
                       f"in [-{depth}, {depth}) (model.backbone.depth={depth})")
  ev = None
  if _NUM_SAMPLES.value:
    study = A.default_study(_CONFIG.value)
    ev = dataclasses.replace(A.QUICK_EVAL if _QUICK.value else A.Eval(gap_images=study.gap_images),
                             num_samples=_NUM_SAMPLES.value)
  _quiet_checkpoint_logs()
  out = A.run_study(_CONFIG.value, _WORKDIR.value, judge_cache=_JUDGE_CACHE.value, ev=ev,
                    probe_layers=probe_layers, **runs)
  if out["failed"]:
    raise SystemExit(f"runs failed: {', '.join(out['failed'])} (see {out['table']}); rerun the "
                     f"same command to retry them")


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
