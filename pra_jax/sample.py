"""Sampling from a trained run: ADM-format .npz plus a PNG grid (one row per class).

  python -m pra_jax.sample --config=configs/demo.py --workdir=DIR --num_images=100 --out=s.npz
"""

import os

import jax
import numpy as np
from absl import app, flags, logging
from flax import nnx
from ml_collections import config_flags
from PIL import Image

from pra_jax import checkpoint, config_check, sampler, sharding


def image_grid(images_BHWC: np.ndarray, rows: int) -> np.ndarray:
  """Tiles B images into `rows` rows (B must divide evenly), with a 1-pixel gap."""
  b, h, w, c = images_BHWC.shape
  cols = -(-b // rows)
  grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, np.uint8)
  for i, im in enumerate(images_BHWC):
    r, col = divmod(i, cols)
    grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + col * (w + 1):1 + col * (w + 1) + w] = im
  return grid


def save_png(grid_HWC: np.ndarray, path: str, scale: int = 1) -> None:
  img = Image.fromarray(grid_HWC[..., 0] if grid_HWC.shape[-1] == 1 else grid_HWC)
  if scale > 1:
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
  tmp = path + ".tmp.png"
  img.save(tmp)
  os.replace(tmp, path)


def class_rows(classes, per_class: int) -> np.ndarray:
  """Labels for a grid with one row per class."""
  return np.repeat(np.asarray(classes, np.int32), per_class)


def generate_many(model, labels: np.ndarray, key, settings, batch_size: int) -> np.ndarray:
  """uint8 images for any number of labels, in fixed-size batches (one compile)."""
  out = []
  for start in range(0, len(labels), batch_size):
    chunk = labels[start:start + batch_size]
    padded = np.pad(chunk, (0, batch_size - len(chunk)), mode="edge")
    images = sampler.generate(model, padded, jax.random.fold_in(key, start), settings)
    out.append(np.asarray(jax.device_get(images))[:len(chunk)])
  return np.concatenate(out)


def write_grid(bundle, config, workdir: str, step: int, writer=None, per_class: int = 10) -> str:
  """During training: an EMA sample grid to TensorBoard and workdir/samples/step_N.png."""
  model = bundle.ema if config.sample.use_ema else bundle.model
  classes = list(range(min(config.data.num_classes, 10)))
  settings = sampler.SampleSettings.from_config(config.sample)
  labels = class_rows(classes, per_class)
  images = generate_many(model, labels, jax.random.key(config.seed + 1), settings,
                         min(config.sample.batch_size, len(labels)))
  grid = image_grid(images, rows=len(classes))
  path = os.path.join(workdir, "samples", f"step_{step:07d}.png")
  if jax.process_index() == 0:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_png(grid, path, scale=2)
    if writer is not None:
      writer.write_images(step, {"samples": grid[None]})
  return path


def restore_model(config, workdir: str, use_ema: bool = True):
  """The (EMA) model of the newest good checkpoint in workdir."""
  from pra_jax import train  # Deferred: train imports this module for its sample grids.

  with config_check.user_input():
    config_check.validate(config)
    checkpoint.check_readable(workdir, config)  # Refuses another run's config; writes nothing.
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint, read_only=True)
  mesh = sharding.make_mesh(config.sharding.mesh)
  bundle = train.create_bundle(config, mesh)
  graphdef, state = nnx.split(bundle)
  with config_check.user_input():
    state, step = ckpt.restore_latest(state)
  if state is None:
    raise ValueError(f"no checkpoint in {ckpt.directory} restores into this config's model")
  bundle = nnx.merge(graphdef, state)
  logging.info("Restored step %d from %s (%s weights).", step, ckpt.directory,
               "EMA" if use_ema else "raw")
  return (bundle.ema if use_ema else bundle.model), step


def _define_flags():
  """CLI flags, defined only when this module runs as the program (train imports it too)."""
  f = {}
  f["config"] = config_flags.DEFINE_config_file("config", None, "Config file of the run.")
  f["workdir"] = flags.DEFINE_string("workdir", None, "Run directory with checkpoints.")
  f["num_images"] = flags.DEFINE_integer("num_images", 100, "Images to generate.")
  f["out"] = flags.DEFINE_string("out", None, "Output .npz (ADM format); a PNG grid beside it.")
  f["cfg"] = flags.DEFINE_float("cfg", None, "Guidance scale (default: config.sample.cfg).")
  f["temperature"] = flags.DEFINE_float("temperature", None, "Head noise temperature.")
  f["steps"] = flags.DEFINE_integer("steps", None, "Head ODE steps per patch.")
  f["seed"] = flags.DEFINE_integer("seed", 0, "Sampling seed.")
  f["classes"] = flags.DEFINE_list("classes", None, "Class ids to sample (default: all, cycled).")
  f["raw_weights"] = flags.DEFINE_bool("raw_weights", False, "Sample raw weights, not the EMA.")
  return f


_FLAGS = {}


def main(argv):
  del argv
  f = {k: v.value for k, v in _FLAGS.items()}
  config, out = f["config"], f["out"]
  if config is None or f["workdir"] is None or out is None:
    raise app.UsageError("--config, --workdir and --out are required")
  if not out.endswith(".npz"):
    raise app.UsageError(f"--out must name a .npz file, got {out}")
  with config_check.user_input():  # Before anything compiles.
    config_check.check_number("--num_images", f["num_images"], 1, float("inf"))
    if f["cfg"] is not None:
      config_check.check_number("--cfg", f["cfg"], 0.0, float("inf"))
  num_classes = config.data.num_classes
  classes = [int(c) for c in f["classes"]] if f["classes"] else list(range(num_classes))
  classes = sampler.check_labels(classes, num_classes).tolist()
  settings = sampler.SampleSettings.from_config(
      config.sample, cfg=f["cfg"], temperature=f["temperature"], num_steps=f["steps"])
  model, step = restore_model(config, f["workdir"], use_ema=not f["raw_weights"])
  per_class = -(-f["num_images"] // len(classes))
  labels = class_rows(classes, per_class)[:f["num_images"]]
  mesh = sharding.make_mesh(config.sharding.mesh)
  with sharding.use_mesh(mesh):
    images = generate_many(model, labels, jax.random.key(f["seed"]), settings,
                           min(config.sample.batch_size, len(labels)))
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  np.savez(out, arr_0=images, arr_1=labels)
  png = out[:-4] + ".png"
  save_png(image_grid(images, rows=-(-len(labels) // per_class)), png,
           scale=max(1, 64 // images.shape[1]))
  logging.info("Wrote %d images of step %d to %s and %s", len(images), step, out, png)
  print(f"wrote {len(images)} images (step {step}, {settings}) to {out} and {png}")


if __name__ == "__main__":
  _FLAGS.update(_define_flags())
  app.run(config_check.cli(main), flags_parser=config_check.parse_flags)
