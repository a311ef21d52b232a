"""The train-inference gap: the head loss per position when the backbone reads ground-truth pixels
(teacher forcing) against when it reads the model's own samples, on held-out images.

  python -m pra_jax.gap --config=configs/demo.py --workdir=DIR

Dimension legend: B images, N patches, P pixels per patch, G generated dims (Z, or P for the
direct-pixel baseline), D backbone width. Three input kinds, all scored against the same target
E(x_i) of the held-out image with the same flow-loss draws (common random numbers):

| kind    | backbone input at position j < i                                              |
| teacher | x_j, the image's own pixels (what training on 'teacher' sees)                 |
| own     | G(z~_j), z~_j drawn by the head from h_j of a teacher-forced pass over the    |
|         | image's x_<j, with the inference sampler (steps, CFG schedule, temperature):  |
|         | the model's one-step continuation of this image's true prefix, every j at once |
| free    | the model's free-running generation for the image's class (errors accumulate, |
|         | but the prefix is no longer this image's, so the loss also grows by design)   |

'own' is the gap measure: it keeps the prefix on the image, so a higher loss than 'teacher' comes
from the model's own sampling error only (one step of it: errors do not compound, as they do in
'free'). h_0 reads the class token alone, so position 0 is the same under every kind; summaries
average positions 1..N-1.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx
from ml_collections import config_flags
from PIL import Image, ImageDraw, ImageFont

from pra_jax import data, sampler
from pra_jax.models import head as head_lib

KINDS = ("teacher", "own", "free")


# ----------------------------------------------------------------------------- the inputs

def own_inputs(model, x_BNP, y_B, key, settings: sampler.SampleSettings):
  """The model's one-step samples of patches 0..N-2, each given the image's true prefix."""
  b, n, _ = x_BNP.shape
  m = n - 1
  h_BND = model.backbone(x_BNP[:, :-1], y_B)
  h_BMD = h_BND[:, :-1]
  guided = settings.cfg != 1.0
  h_uncond = None
  if guided:
    h_null = model.backbone(x_BNP[:, :-1], jnp.full_like(y_B, model.null_class))
    h_uncond = h_null[:, :-1].reshape(b * m, -1)
  scales_M = jnp.broadcast_to(sampler.cfg_scales(settings, n)[:m], (b, m)).reshape(-1)
  noise = settings.temperature * jax.random.normal(key, (b * m, model.gen_dim))
  g = head_lib.sample(model.head, h_BMD.reshape(b * m, -1), noise, num_steps=settings.num_steps,
                      solver=settings.solver, h_uncond_MD=h_uncond, cfg_scale=scales_M)
  return model.decode(g.reshape(b, m, -1), h_BMD)


def free_inputs(model, y_B, key, settings: sampler.SampleSettings):
  """Patches 0..N-2 of the model's own free-running generation for the labels y_B."""
  x_BNP, _ = sampler.rollout(model, y_B, key, settings)
  return x_BNP[:, :-1]


def head_loss_BN(model, x_in_BMP, y_B, target_BNG, key, num_calls: int):
  """Flow loss per position of the target given the inputs: num_calls x head.num_draws draws."""
  b, n, _ = target_BNG.shape
  h = model.backbone(x_in_BMP, y_B).reshape(b * n, -1)
  target = target_BNG.reshape(b * n, -1)
  total = sum(head_lib.flow_loss(model.head, target, h, jax.random.fold_in(key, c))
              for c in range(num_calls))
  return (total / num_calls).reshape(b, n)


@nnx.jit(static_argnames=("settings", "num_calls", "num_rollouts", "kinds"))
def _gap_batch(model, images, labels, key, settings, num_calls, num_rollouts, kinds):
  """{kind: per-image, per-position head loss [B, N]} for one batch of held-out images."""
  x_BNP = model.to_patches(images)
  target = jax.lax.stop_gradient(model.encode(x_BNP))
  key_loss, key_inputs = jax.random.split(key)
  make_inputs = {"own": lambda k: own_inputs(model, x_BNP, labels, k, settings),
                 "free": lambda k: free_inputs(model, labels, k, settings)}
  # The same loss key for every kind: their differences are not noise of the flow-loss draws.
  out = {"teacher": head_loss_BN(model, x_BNP[:, :-1], labels, target, key_loss, num_calls)}
  for kind in kinds:
    if kind != "teacher":
      key_kind = jax.random.fold_in(key_inputs, KINDS.index(kind))
      out[kind] = sum(head_loss_BN(model, make_inputs[kind](jax.random.fold_in(key_kind, r)),
                                   labels, target, key_loss, num_calls)
                      for r in range(num_rollouts)) / num_rollouts
  return out


# ----------------------------------------------------------------------------- the diagnostic

def measure(model, images, labels, key, settings: sampler.SampleSettings, *, noise_draws: int = 16,
            num_rollouts: int = 2, batch_size: int = 100, kinds=KINDS) -> dict:
  """Per-position head loss under each input kind on (images, labels), and their ratios.

  Returns numpy arrays of length N: `<kind>` (mean loss), `<kind>_stderr` (over images),
  `ratio_<kind>` (mean loss / mean teacher loss) for every kind but teacher, and scalars
  `ratio_<kind>_mean` (the mean ratio over positions 1..N-1) and `num_images`.
  """
  kinds = tuple(k for k in KINDS if k in kinds or k == "teacher")
  labels = sampler.check_labels(labels, model.num_classes)
  num_calls = max(1, math.ceil(noise_draws / model.head.cfg.num_draws))
  batch_size = min(batch_size, len(labels))
  per_image = {k: [] for k in kinds}
  for start in range(0, len(labels), batch_size):
    chunk = slice(start, start + batch_size)
    n_real = len(labels[chunk])
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], batch_size - len(a), axis=0)])
    out = _gap_batch(model, jnp.asarray(pad(images[chunk])), jnp.asarray(pad(labels[chunk])),
                     jax.random.fold_in(key, start), settings, num_calls, num_rollouts, kinds)
    for k in kinds:
      per_image[k].append(np.asarray(out[k], np.float64)[:n_real])
  result = {"position": np.arange(model.num_patches), "num_images": len(labels),
            "noise_draws": num_calls * model.head.cfg.num_draws, "num_rollouts": num_rollouts}
  for k in kinds:
    losses_BN = np.concatenate(per_image[k])
    result[k] = losses_BN.mean(axis=0)
    result[f"{k}_stderr"] = losses_BN.std(axis=0, ddof=1) / np.sqrt(len(losses_BN)) \
        if len(losses_BN) > 1 else np.zeros(losses_BN.shape[1])
  for k in kinds[1:]:
    result[f"ratio_{k}"] = result[k] / result["teacher"]
    result[f"ratio_{k}_mean"] = float(result[f"ratio_{k}"][1:].mean())
  return result


def held_out(config, num_images: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The held-out split of the run's data (all of it, or the first num_images)."""
  if config.data.source != "digits":
    raise ValueError(f"the gap diagnostic reads the digits 'eval' split; data.source="
                     f"{config.data.source!r} is not supported yet")
  images, labels = data.load_digits_split("eval", config.data.image_size)
  return images[:num_images], labels[:num_images]


# ----------------------------------------------------------------------------- plot and logs

_COLOURS = {"teacher": (31, 119, 180), "own": (255, 127, 14), "free": (44, 160, 44)}


def label_font(size: int):
  try:
    return ImageFont.load_default(size=size)
  except TypeError:  # Pillow without FreeType: the fixed bitmap font.
    return ImageFont.load_default()


def _panel(draw, box, series: dict, title: str, font, reference: float | None = None):
  """Draws {name: (x, y, err)} as lines with error bars inside box = (left, top, right, bottom)."""
  left, top, right, bottom = box
  xs = np.concatenate([s[0] for s in series.values()])
  lows = np.concatenate([s[1] - s[2] for s in series.values()])
  highs = np.concatenate([s[1] + s[2] for s in series.values()])
  if reference is not None:
    lows, highs = np.append(lows, reference), np.append(highs, reference)
  y_lo, y_hi = float(lows.min()), float(highs.max())
  if y_hi - y_lo < 1e-9:
    y_lo, y_hi = y_lo - 0.5, y_hi + 0.5
  margin = 0.05 * (y_hi - y_lo)
  y_lo, y_hi = y_lo - margin, y_hi + margin
  x_lo, x_hi = float(xs.min()), float(max(xs.max(), xs.min() + 1))
  px = lambda x: left + (x - x_lo) / (x_hi - x_lo) * (right - left)
  py = lambda y: bottom - (y - y_lo) / (y_hi - y_lo) * (bottom - top)
  draw.rectangle(box, outline=(0, 0, 0))
  draw.text((left, top - 18), title, fill=(0, 0, 0), font=font)
  for frac in np.linspace(0, 1, 5):
    y = y_lo + frac * (y_hi - y_lo)
    draw.line([(left - 4, py(y)), (left, py(y))], fill=(0, 0, 0))
    draw.text((left - 52, py(y) - 6), f"{y:.3g}", fill=(0, 0, 0), font=font)
  for x in range(int(x_lo), int(x_hi) + 1, max(1, int(x_hi - x_lo) // 8)):
    draw.line([(px(x), bottom), (px(x), bottom + 4)], fill=(0, 0, 0))
    draw.text((px(x) - 4, bottom + 6), str(x), fill=(0, 0, 0), font=font)
  if reference is not None:
    draw.line([(left, py(reference)), (right, py(reference))], fill=(160, 160, 160))
  for i, (name, (x, y, err)) in enumerate(series.items()):
    colour = _COLOURS.get(name.split("/")[0], (0, 0, 0))
    points = [(px(a), py(b)) for a, b in zip(x, y)]
    draw.line(points, fill=colour, width=2)
    for (a, b), e in zip(points, err):
      half = e / (y_hi - y_lo) * (bottom - top)
      draw.line([(a, b - half), (a, b + half)], fill=colour)
      draw.ellipse([a - 2, b - 2, a + 2, b + 2], fill=colour)
    # The legend sits above the panel's right end, clear of the curves.
    x_key = right - 95 * (len(series) - i)
    draw.line([(x_key, top - 11), (x_key + 20, top - 11)], fill=colour, width=2)
    draw.text((x_key + 25, top - 18), name, fill=(0, 0, 0), font=font)


def plot(result: dict, path: str, title: str = "") -> np.ndarray:
  """Head loss per position (top) and its ratio to teacher forcing (bottom): a PNG; returns it."""
  kinds = [k for k in KINDS if k in result]
  x = result["position"]
  img = Image.new("RGB", (640, 540), (255, 255, 255))
  draw = ImageDraw.Draw(img)
  font = label_font(12)
  draw.text((70, 6), title or "train-inference gap", fill=(0, 0, 0), font=label_font(14))
  _panel(draw, (70, 50, 620, 250),
         {k: (x, result[k], result[f"{k}_stderr"]) for k in kinds},
         "head loss per position (+- stderr over images)", font)
  ratios = {f"{k}/teacher": (x, result[f"ratio_{k}"], np.zeros_like(x, float)) for k in kinds[1:]}
  if ratios:
    _panel(draw, (70, 300, 620, 490), ratios, "ratio to teacher-forced loss", font, reference=1.0)
  draw.text((260, 515), "patch position (raster order)", fill=(0, 0, 0), font=font)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp.png"
  img.save(tmp)
  os.replace(tmp, path)
  return np.asarray(img)


def to_json(result: dict) -> dict:
  return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in result.items()}


def write(result: dict, outdir: str, step: int, title: str = "") -> str:
  """PNG, JSON and TensorBoard summaries (per-position scalars, step = position) under outdir."""
  from clu import metric_writers

  os.makedirs(outdir, exist_ok=True)
  png = os.path.join(outdir, f"gap_step_{step:07d}.png")
  image = plot(result, png, title)
  with open(os.path.join(outdir, f"gap_step_{step:07d}.json"), "w") as f:
    json.dump(to_json(result), f, indent=1)
  writer = metric_writers.create_default_writer(outdir, just_logging=jax.process_index() > 0)
  kinds = [k for k in KINDS if k in result]
  for pos in result["position"].tolist():
    scalars = {f"gap_per_position/{k}": float(result[k][pos]) for k in kinds}
    scalars.update({f"gap_per_position/ratio_{k}": float(result[f"ratio_{k}"][pos])
                    for k in kinds[1:]})
    writer.write_scalars(pos, scalars)
  writer.write_scalars(step, {f"gap/ratio_{k}_mean": result[f"ratio_{k}_mean"] for k in kinds[1:]})
  writer.write_images(step, {"gap/plot": image[None]})
  writer.flush()
  writer.close()
  return png


def run(config, workdir: str, *, outdir: str | None = None, num_images: int | None = None,
        noise_draws: int = 16, num_rollouts: int = 2, seed: int = 0, use_ema: bool = True,
        kinds=KINDS, batch_size: int = 100, **setting_overrides) -> tuple[dict, str]:
  """Restores the run in workdir, measures its gap on held-out images and writes the outputs."""
  from pra_jax import sample, sharding

  model, step = sample.restore_model(config, workdir, use_ema=use_ema)
  settings = sampler.SampleSettings.from_config(config.sample, **setting_overrides)
  images, labels = held_out(config, num_images)
  with sharding.use_mesh(sharding.make_mesh(config.sharding.mesh)):
    result = measure(model, images, labels, jax.random.key(seed), settings,
                     noise_draws=noise_draws, num_rollouts=num_rollouts, batch_size=batch_size,
                     kinds=kinds)
  png = write(result, outdir or os.path.join(workdir, "gap"), step,
              title=f"{os.path.basename(os.path.normpath(workdir))} step {step}")
  return result, png


# ----------------------------------------------------------------------------- CLI

def _define_flags():
  """CLI flags, defined only when this module runs as the program (pra_jax.ablate imports it)."""
  return {
      "config": config_flags.DEFINE_config_file("config", None, "Config file of the trained run."),
      "workdir": flags.DEFINE_string("workdir", None, "Run directory with checkpoints."),
      "outdir": flags.DEFINE_string("outdir", None, "Where the PNG, JSON and events go "
                                    "(default WORKDIR/gap)."),
      "num_images": flags.DEFINE_integer("num_images", None, "Held-out images (default: all)."),
      "noise_draws": flags.DEFINE_integer("noise_draws", 16, "Flow-loss (t, eps) draws per "
                                          "position, rounded up to a multiple of head.num_draws."),
      "num_rollouts": flags.DEFINE_integer("num_rollouts", 2, "Own-input sample draws per image."),
      "kinds": flags.DEFINE_list("kinds", list(KINDS), "Input kinds (teacher is always measured)."),
      "seed": flags.DEFINE_integer("seed", 0, "Key of every draw."),
      "cfg": flags.DEFINE_float("cfg", None, "Guidance of the own samples (default: "
                                "config.sample.cfg)."),
      "steps": flags.DEFINE_integer("steps", None, "Head ODE steps of the own samples."),
      "raw_weights": flags.DEFINE_bool("raw_weights", False, "Measure the raw weights, not the "
                                       "EMA."),
  }


_FLAGS = {}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = {k: v.value for k, v in _FLAGS.items()}
  if f["config"] is None or f["workdir"] is None:
    raise app.UsageError("--config and --workdir are required")
  unknown = set(f["kinds"]) - set(KINDS)
  if unknown:
    raise app.UsageError(f"--kinds must be among {KINDS}, got {sorted(unknown)}")
  result, png = run(f["config"], f["workdir"], outdir=f["outdir"], num_images=f["num_images"],
                    noise_draws=f["noise_draws"], num_rollouts=f["num_rollouts"], seed=f["seed"],
                    use_ema=not f["raw_weights"], kinds=tuple(f["kinds"]), cfg=f["cfg"],
                    num_steps=f["steps"])
  kinds = [k for k in KINDS if k in result]
  print(f"gap on {result['num_images']} held-out images, {result['noise_draws']} loss draws: "
        + ", ".join(f"mean {k}/teacher ratio {result[f'ratio_{k}_mean']:.3f}" for k in kinds[1:]))
  print("position " + " ".join(f"{p:>6d}" for p in result["position"]))
  for k in kinds:
    print(f"{k:>8} " + " ".join(f"{v:6.3f}" for v in result[k]))
  print(f"wrote {png}")


if __name__ == "__main__":
  _FLAGS.update(_define_flags())
  app.run(main)
