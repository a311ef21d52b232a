"""The train-inference gap on held-out images: the head loss per position of the image's own
target E(x_i) when the backbone reads different prefixes, in absolute terms, with the control
that says whether the model reads its prefix at all.

  python -m pra_jax.gap --config=configs/demo.py --workdir=DIR   (the CLI: pra_jax/gap.py)

Dimension legend (pra_jax's table): B images, N patches, I = N - 1 backbone inputs, P pixels
per patch, Z state dims (P for the direct-pixel baseline), D backbone width. Every kind is scored
against the same target with the same flow-loss draws (common random numbers). Kinds are
rollout's input modes (pra_jax.rollout.build_inputs, the very inputs that training on that mode
sees), plus 'other':

| kind        | backbone input at position j < i                                                |
| teacher     | x_j, the image's own pixels                                                     |
| other       | x_j of another held-out image of the same class (the prefix-sensitivity control)|
| head_sample | G(z~_j), the model's own one-step sample given the image's true prefix x_<j     |
| exact       | the model's own free-running generation of the class, one patch after another   |
| pixel_noise, recon, pra | those training modes' inputs                                        |

head_sample and exact use rollout.couple_t0 = `couple_t0`, 0 by default: what inference feeds the
model (a sample that knows nothing of x_j), not the coupled training inputs. They use the
sampler's head steps, unguided (cfg 1): the gap of the learned conditional itself.

Reading the numbers (positions 1..N-1; h_0 reads the class token alone, so position 0 is the
same under every kind):
- `sensitivity` = other / teacher: how much the image's own prefix tells the model about x_i.
  About 1 means the model ignores its prefix; every other number then means nothing (such a
  model has no train-inference gap to measure, and scores own/teacher = 1 without being good).
- `lost_<kind>` = (kind - teacher) / (other - teacher): the share of that information lost when
  the prefix is replaced by `kind`'s inputs. 0: as informative as the true pixels; 1: no better
  than a real image of the class that is not this one; above 1: worse than that, i.e. the inputs
  are off the distribution the model reads. For head_sample (one sampling step, errors do not
  compound) this is the one-step gap; for exact (a free rollout, never this image) 1 is the
  floor of a perfect model and the excess over 1 is the compounding gap. Even a perfect model
  scores lost_head_sample > 0: an independent sample of x_j is not x_j.
Compare models on lost_* only where both have a sensitivity clearly above 1.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx
from PIL import Image, ImageDraw

from pra_jax import batching, data, files, rollout, sharding, restore

from pra_jax.sampling import ar_loop
from pra_jax.models import head as head_lib
from pra_jax.studies import report

KINDS = ("teacher", "other", "head_sample", "exact") + tuple(
    m for m in rollout.MODES if m not in ("teacher", "head_sample", "exact"))
DEFAULT_KINDS = ("teacher", "other", "head_sample", "exact")
_REFERENCES = ("teacher", "other")  # What lost_<kind> is measured between.


# ----------------------------------------------------------------------------- the inputs

def kind_config(config, kind: str, *, num_steps: int, couple_t0: float):
  """The run's config with rollout.mode = kind: what build_inputs reads to make its inputs."""
  c = config.copy_and_resolve_references()
  c.rollout.mode = "teacher" if kind == "other" else kind
  c.rollout.head_sample_steps = num_steps
  c.rollout.couple_t0 = float(couple_t0)
  return ml_collections.FrozenConfigDict(c)


def same_class_partners(labels: np.ndarray) -> np.ndarray:
  """Index of another image of the same class for every image: the one half the class away in
  the split's order (cyclically). Digits are in random order; the photos' held-out crops are in
  x order along one row, so a partner is half a photo's width away and shares no pixels (an
  overlapping neighbour would share most of its prefix and hide the model's sensitivity)."""
  partner = np.arange(len(labels))
  for c in np.unique(labels):
    idx = np.flatnonzero(labels == c)
    if len(idx) < 2:
      raise ValueError(f"the prefix-sensitivity control needs two held-out images of every "
                       f"class; class {int(c)} has {len(idx)}")
    partner[idx] = np.roll(idx, -(len(idx) // 2))
  return partner


def head_loss_BN(model, x_in_BIP, y_B, target_BNZ, key, num_calls: int):
  """Flow loss per position of the target given the inputs: num_calls x head.num_draws draws."""
  b, n, _ = target_BNZ.shape
  h = model.backbone(x_in_BIP, y_B).reshape(b * n, -1)
  target = target_BNZ.reshape(b * n, -1)
  total = sum(head_lib.flow_loss(model.head, target, h, jax.random.fold_in(key, c))
              for c in range(num_calls))
  return (total / num_calls).reshape(b, n)


@nnx.jit(static_argnames=("configs", "num_calls", "num_rollouts", "step"))
def _gap_batch(model, images, other_images, labels, key, configs, num_calls, num_rollouts, step):
  """{kind: per-image, per-position head loss [B, N]} for one batch of held-out images."""
  x_BNP = model.to_patches(images)
  z_BNZ = model.encode(x_BNP)
  target = jax.lax.stop_gradient(z_BNZ)
  key_loss, key_inputs = jax.random.split(key)
  # The same loss key for every kind: their differences are not noise of the flow-loss draws.
  loss = lambda x_in: head_loss_BN(model, x_in, labels, target, key_loss, num_calls)
  out = {}
  for kind, config in configs:
    if kind == "other":
      out[kind] = loss(model.to_patches(other_images)[:, :-1])
      continue
    draws = 1 if kind == "teacher" else num_rollouts
    key_kind = jax.random.fold_in(key_inputs, KINDS.index(kind))
    out[kind] = sum(loss(jax.lax.stop_gradient(rollout.build_inputs(
        model, x_BNP, z_BNZ, labels, jax.random.fold_in(key_kind, r), step, config)))
        for r in range(draws)) / draws
  return out


# ----------------------------------------------------------------------------- the diagnostic

def measure(model, images, labels, key, config, *, num_steps: int | None = None,
            couple_t0: float = 0.0, noise_draws: int = 16, num_rollouts: int = 2,
            batch_size: int = 100, kinds=DEFAULT_KINDS, step: int | None = None) -> dict:
  """Per-position head loss under each input kind on (images, labels), and the summaries.

  Returns numpy arrays of length N: `<kind>` (mean loss), `<kind>_stderr` (over images) and
  `ratio_<kind>` (mean loss / mean teacher loss); scalars over positions 1..N-1: `<kind>_mean`,
  `sensitivity` (other / teacher) and `lost_<kind>` for every kind but the two references (see
  the module docstring), and `num_images`. teacher and other are always measured.
  `num_steps`: head ODE steps of the sampled kinds (default config.sample.num_steps); `step`:
  where a scheduled sigma law stands (default: the end of training).
  """
  unknown = sorted(set(kinds) - set(KINDS))
  if unknown:
    raise ValueError(f"gap kinds must be among {KINDS}, got {unknown}")
  kinds = tuple(k for k in KINDS if k in kinds or k in _REFERENCES)
  num_steps = num_steps or config.sample.num_steps
  step = config.train.num_steps if step is None else int(step)
  configs = tuple((k, kind_config(config, k, num_steps=num_steps, couple_t0=couple_t0))
                  for k in kinds)
  for _, c in configs:
    rollout.check_config(c)   # A state kind on a direct-pixel model: one clear error, up front.
  labels = ar_loop.check_labels(labels, model.num_classes)
  images = np.asarray(images)
  others = images[same_class_partners(labels)]
  num_calls = max(1, math.ceil(noise_draws / model.head.cfg.num_draws))
  batch_size = min(batch_size, len(labels))
  per_image = {k: [] for k in kinds}
  for start, n_real, (images_B, others_B, labels_B) in batching.padded_batches(
      batch_size, images, others, labels):
    out = _gap_batch(model, jnp.asarray(images_B), jnp.asarray(others_B), jnp.asarray(labels_B),
                     jax.random.fold_in(key, start), configs, num_calls, num_rollouts, step)
    for k in kinds:
      per_image[k].append(np.asarray(out[k], np.float64)[:n_real])
  result = {"position": np.arange(model.num_patches), "num_images": len(labels),
            "noise_draws": num_calls * model.head.cfg.num_draws, "num_rollouts": num_rollouts,
            "num_steps": num_steps, "couple_t0": float(couple_t0)}
  for k in kinds:
    losses_BN = np.concatenate(per_image[k])
    result[k] = losses_BN.mean(axis=0)
    result[f"{k}_stderr"] = losses_BN.std(axis=0, ddof=1) / np.sqrt(len(losses_BN)) \
        if len(losses_BN) > 1 else np.zeros(losses_BN.shape[1])
    result[f"{k}_mean"] = float(result[k][1:].mean())
  for k in kinds[1:]:
    result[f"ratio_{k}"] = result[k] / result["teacher"]
  teacher, other = result["teacher_mean"], result["other_mean"]
  result["sensitivity"] = other / teacher
  for k in kinds:
    if k not in _REFERENCES:
      result[f"lost_{k}"] = (result[f"{k}_mean"] - teacher) / (other - teacher) \
          if other != teacher else float("nan")
  return result


def held_out(config, num_images: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The held-out split of the run's data: all of it, or about num_images of it, the same number
  of every class (at least 2, so each image has a same-class partner for the control)."""
  images, labels = data.load_eval_arrays(config.data)
  if num_images is not None and num_images < len(labels):
    classes = np.unique(labels)
    per_class = max(2, math.ceil(num_images / len(classes)))
    # Evenly spread over each class's images (in the split's order), not its first few: the
    # photos' crops are stored in x order, and the first few would overlap each other.
    take = np.sort(np.concatenate([
        idx[np.linspace(0, len(idx) - 1, min(per_class, len(idx))).round().astype(int)]
        for idx in (np.flatnonzero(labels == c) for c in classes)]))
    images, labels = images[take], labels[take]
  return images, labels


def summary_line(result: dict) -> str:
  """The headline numbers in one line (absolute losses first: the ratios need them)."""
  kinds = [k for k in KINDS if f"{k}_mean" in result]
  return (f"gap on {result['num_images']} held-out images, {result['noise_draws']} loss draws: "
          "mean head loss " + ", ".join(f"{k} {result[f'{k}_mean']:.4f}" for k in kinds)
          + f"; sensitivity other/teacher {result['sensitivity']:.3f}; "
          + ", ".join(f"lost_{k} {result[f'lost_{k}']:.3f}" for k in kinds
                      if k not in _REFERENCES))


# ----------------------------------------------------------------------------- plot and logs

def plot(result: dict, path: str, title: str = "") -> np.ndarray:
  """Head loss per position (top) and its ratio to teacher forcing (bottom): a PNG; returns it."""
  kinds = [k for k in KINDS if k in result]
  x = result["position"]
  img = Image.new("RGB", (760, 580), (255, 255, 255))
  draw = ImageDraw.Draw(img)
  font = report.label_font(12)
  draw.text((70, 6), title or "train-inference gap", fill=(0, 0, 0),
            font=report.label_font(14))
  report.line_panel(draw, (70, 70, 740, 270),
                    {k: (x, result[k], result[f"{k}_stderr"]) for k in kinds},
                    "head loss per position (+- stderr over images)", font)
  ratios = {k: (x, result[f"ratio_{k}"], np.zeros_like(x, float)) for k in kinds[1:]}
  if ratios:
    report.line_panel(draw, (70, 340, 740, 530), ratios,
                      "ratio to the teacher-forced loss (other: the control)", font, reference=1.0)
  draw.text((320, 555), "patch position (raster order)", fill=(0, 0, 0), font=font)
  files.save_png(img, path)
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
  summary = {f"gap/{k}_mean": result[f"{k}_mean"] for k in kinds}
  summary.update({f"gap/lost_{k}": result[f"lost_{k}"] for k in kinds if k not in _REFERENCES})
  writer.write_scalars(step, {**summary, "gap/sensitivity": result["sensitivity"]})
  writer.write_images(step, {"gap/plot": image[None]})
  writer.flush()
  writer.close()
  return png


def run(config, workdir: str, *, outdir: str | None = None, num_images: int | None = None,
        noise_draws: int = 16, num_rollouts: int = 2, seed: int = 0, use_ema: bool = True,
        kinds=DEFAULT_KINDS, batch_size: int = 100, num_steps: int | None = None,
        couple_t0: float = 0.0) -> tuple[dict, str]:
  """Restores the run in workdir, measures its gap on held-out images and writes the outputs."""
  model, mesh, step = restore.restore_for_sampling(config, workdir, use_ema=use_ema)
  images, labels = held_out(config, num_images)
  with sharding.use_mesh(mesh):
    result = measure(model, images, labels, jax.random.key(seed), config, num_steps=num_steps,
                     couple_t0=couple_t0, noise_draws=noise_draws, num_rollouts=num_rollouts,
                     batch_size=batch_size, kinds=kinds, step=step)
  png = write(result, outdir or os.path.join(workdir, "gap"), step,
              title=f"{os.path.basename(os.path.normpath(workdir))} step {step}")
  return result, png
