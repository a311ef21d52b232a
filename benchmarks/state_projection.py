"""What `model.state.project` changes at sampling: the states G would read, and the samples.

  python benchmarks/state_projection.py --config=configs/demo.py --workdir=/tmp/pra_demo

For a trained digits run, at CFG 1 and 4, generates class-balanced samples with G's projection
on and off (same keys, same states up to the first patch that differs) and prints:
- state error: RMS over patches of |g - project(g)| / sqrt(Z), how far a sampled state g lies
  from the set E outputs (what G reads off that set when the projection is off), and the mean
  |RMS(g) - 1| and |mean(g)| per patch;
- the digits judge's class accuracy and Frechet distance of the samples (with their count).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import dataclasses  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from benchmarks import _common  # noqa: E402
from pra_jax import periodic_eval, restore, rng  # noqa: E402
from pra_jax.sampling import ar_loop  # noqa: E402
from pra_jax.metrics import digits  # noqa: E402
from pra_jax.models import state as state_lib  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/demo.py", "Config of the run.")
_WORKDIR = flags.DEFINE_string("workdir", "/tmp/pra_demo", "Trained digits run.")
_NUM = flags.DEFINE_integer("num_images", 500, "Samples per setting (classes balanced).")
_CFGS = flags.DEFINE_list("cfg", ["1", "4"], "Guidance scales.")


@nnx.jit(static_argnames=("settings",))
def _states_and_images(model, labels, keys, settings):
  x_BNP, g_BNZ = ar_loop.sample_patches(model, labels, keys, settings)
  return g_BNZ, model.to_images(x_BNP)


def main(argv):
  del argv
  config = _CONFIG.value
  if config.model.direct_pixel:
    raise app.UsageError("a direct-pixel model has no state to project")
  model, _, step = restore.restore_for_sampling(config, _WORKDIR.value, use_ema=True)
  labels = periodic_eval.balanced_labels(_NUM.value, config.data.num_classes)
  judge_cache = os.path.join(_WORKDIR.value, "eval_cache")
  norm = config.model.state.norm
  parts = []
  for cfg in map(float, _CFGS.value):
    settings = dataclasses.replace(ar_loop.SampleSettings.from_config(config.sample), cfg=cfg)
    for project in (True, False):
      model.decoder.project_kind = norm if project else "none"
      gs, ims = [], []
      batch = min(config.sample.batch_size, len(labels))
      for start in range(0, len(labels), batch):
        chunk = labels[start:start + batch]
        keys = rng.example_keys(jax.random.key(0), len(chunk), start)   # Image k: key k.
        g, im = _states_and_images(model, jnp.asarray(chunk), keys, settings)
        gs.append(np.asarray(g))
        ims.append(np.asarray(im))
      g = np.concatenate(gs).reshape(-1, config.model.state.dim)
      proj = np.asarray(state_lib.project_state(jnp.asarray(g), norm))
      err = float(np.sqrt(np.mean(np.sum((g - proj) ** 2, -1) / g.shape[-1])))
      rms_dev = float(np.mean(np.abs(np.sqrt(np.mean(g ** 2, -1)) - 1.0)))
      mean_dev = float(np.mean(np.abs(g.mean(-1))))
      m = digits.evaluate_digits(np.concatenate(ims), labels, judge_cache)
      parts.append(f"cfg {cfg:g} project {'on' if project else 'off'}: state error {err:.3f} "
                   f"(|rms-1| {rms_dev:.3f}, |mean| {mean_dev:.3f}), accuracy "
                   f"{m['digits_accuracy']:.3f}, FD {m['digits_fd']:.2f} (n={len(labels)})")
  print(f"state_projection | {_common.machine()} | step {step} of {_WORKDIR.value} | "
        + " | ".join(parts))


if __name__ == "__main__":
  app.run(main)
