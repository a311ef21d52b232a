"""Input pipeline throughput: ImageNet-style JPEG decode + resize + centre crop + flip through
pra_jax.data's 'folder' source and make_train_iterator, against what the train step consumes.

  python benchmarks/bench_input_pipeline.py --config=benchmarks/mid.py

The folder is generated: JPEGs (quality 90) with a 256-pixel shorter side and aspect ratios up
to 4:3, of smooth random content plus grain, so that decoding and resampling do real work.
"Per core" divides the images by the CPU seconds the process spent (user + system, all reading
threads), so it does not depend on how many cores the machine lends. The train step's rate is
bench_mfu's measurement of the same config in the same run. Prints one line.
"""

import copy
import os
import tempfile
import time

import _common as C  # Puts the repository on sys.path.
import _flops
import numpy as np
from absl import app, flags
from ml_collections import config_flags
from PIL import Image

from pra_jax import data

_CONFIG = config_flags.DEFINE_config_file("config", "benchmarks/mid.py",
                                          "Config whose image size and train step to use.")
_QUICK = flags.DEFINE_bool("quick", False, "A few images and one train step (for the tests).")
_IMAGES = flags.DEFINE_integer("images", 512, "JPEGs to generate.")
_BATCH = flags.DEFINE_integer("batch", 32, "Pipeline batch size.")
_FOLDER = flags.DEFINE_string("folder", None, "Read this folder instead of generating one.")


def write_jpegs(root: str, count: int, short_side: int = 256, classes: int = 10,
                seed: int = 0) -> None:
  """`count` JPEGs in `classes` class folders, each short_side x (short_side .. 4/3 of it)."""
  rng = np.random.default_rng(seed)
  for c in range(classes):
    os.makedirs(os.path.join(root, f"class_{c:03d}"), exist_ok=True)
  for i in range(count):
    long_side = int(rng.integers(short_side, short_side * 4 // 3 + 1))
    w, h = (long_side, short_side) if i % 2 else (short_side, long_side)
    coarse = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.int16)
    grain = rng.integers(-12, 13, smooth.shape, dtype=np.int16)
    pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
    path = os.path.join(root, f"class_{i % classes:03d}", f"img_{i:05d}.jpg")
    Image.fromarray(pixels).save(path, quality=90)


def pipeline_rate(data_cfg, batch: int, num_batches: int) -> dict:
  """Images/s (wall) and images per CPU-second of make_train_iterator over the folder."""
  it = data.make_train_iterator(data_cfg, local_batch_size=batch, seed=0, process_index=0,
                                process_count=1)
  next(it)  # Starts the reading threads; their first batch is not timed.
  wall0, cpu0 = time.perf_counter(), time.process_time()
  for _ in range(num_batches):
    out = next(it)
  wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
  assert out["image"].shape == (batch, data_cfg.image_size, data_cfg.image_size, 3)
  images = batch * num_batches
  return {"per_s": images / wall, "per_core_s": images / cpu, "cpu_s": cpu, "wall_s": wall}


def main(argv):
  del argv
  config = _CONFIG.value
  quick = _QUICK.value
  count = 16 if quick else _IMAGES.value
  batch = 4 if quick else _BATCH.value
  with tempfile.TemporaryDirectory() as tmp:
    root = _FOLDER.value or tmp
    if not _FOLDER.value:
      write_jpegs(root, count)
    d = copy.deepcopy(config.data)
    d.source, d.folder, d.eval_folder = "folder", root, ""
    d.image_size, d.channels, d.random_flip, d.worker_count = 256, 3, True, 0
    d.num_classes = max(d.num_classes, 10)
    num_batches = max((2 if quick else 3) * count // batch, 1)  # Several epochs: all decoded.
    pipe = pipeline_rate(d, batch, num_batches)
  train = _flops.measure(config, 1 if quick else 3, 256, cross_check=False)
  cores_per_device = train["images_per_s"] / pipe["per_core_s"]
  print(f"bench_input_pipeline | {C.machine()} | 256px JPEG decode+resize+crop+flip, batch "
        f"{batch}, in-process threads: {pipe['per_s']:.0f} images/s wall, "
        f"{pipe['per_core_s']:.0f} images/s per core | train step "
        f"(config={C.config_name(flags.FLAGS['config'])}, batch {train['batch']}) consumes "
        f"{train['images_per_s']:.2f} images/s per device: {cores_per_device:.3f} cores per "
        f"device keep it fed", flush=True)


if __name__ == "__main__":
  app.run(main)
