"""The sampling job behind `python -m pra_jax.sample`: data-parallel over every device of every
process, resumable chunk by chunk (pra_jax/chunk_store.py), merged into an ADM-format .npz and
a PNG grid.

Image k depends only on (seed, k) (it draws from fold_in(rng.stream(seed, "sample"), k)): neither the batch size nor the device or process count
changes it. plan_run checks everything before anything is restored or compiled; sample_to_npz
runs the plan.
"""

import dataclasses
import json
import os
import signal
import threading
import time

import jax
import numpy as np
from flax import traverse_util
from absl import logging

from pra_jax import checkpoint, cli, config_check, restore, rng, run_record
from pra_jax.sampling import ar_loop, chunk_store, data_parallel, grids

PER_CLASS = 50           # ADM's protocol: 50 samples per class, 50,000 for 1000 classes.
EXIT_PREEMPTED = 143     # 128 + SIGTERM: what a shell reports for a process that SIGTERM ended.


class _StopRequest:
  """SIGTERM (preemption, a scheduler's time limit) asks the loop to stop after this chunk."""

  def __init__(self):
    self.requested = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


@dataclasses.dataclass
class Plan:
  """What a sampling run makes, and where: everything but the devices that make it."""
  out: str
  chunk_dir: str
  workdir: str
  step: int
  use_ema: bool | str       # True / False, or a weights name ('ema_1': train.ema_decays[0]).
  seed: int
  settings: ar_loop.SampleSettings
  classes: list
  labels_X: np.ndarray       # Image k's class: the classes in order, an equal run of each.
  chunk_size: int
  per_device_batch: int

  @property
  def png(self) -> str:
    return self.out[:-len(".npz")] + ".png"

  @property
  def num_chunks(self) -> int:
    return chunk_store.num_chunks(self.chunk_size, len(self.labels_X))

  def chunk_range(self, chunk: int) -> tuple[int, int]:
    return chunk_store.chunk_range(chunk, self.chunk_size, len(self.labels_X))


def _flat(tree: dict, prefix: str) -> dict:
  return {prefix + k: v for k, v in traverse_util.flatten_dict(tree, sep=".").items()}


def _manifest(plan: Plan, config, checkpoint_dir: str) -> dict:
  """Everything that fixes the images, flat, so a mismatch names the exact setting."""
  c = json.loads(config.to_json_best_effort())
  shapes = {"model": c["model"], "data": {k: c["data"][k] for k in
                                          ("image_size", "channels", "num_classes")}}
  settings = {k: v for k, v in dataclasses.asdict(plan.settings).items() if k != "use_cache"}
  return {"format": 1, "seed": plan.seed, "num_images": len(plan.labels_X),
          "classes": plan.classes, "chunk_size": plan.chunk_size,
          "checkpoint.dir": checkpoint_dir, "checkpoint.step": plan.step,
          "weights": plan.use_ema if isinstance(plan.use_ema, str) else (
              "ema" if plan.use_ema else "raw"),
          **_flat(settings, "ar_loop."), **_flat(shapes, "config.")}


def plan_run(config, workdir: str, out: str, *, num_images=None, classes=None, seed: int = 0,
             cfg=None, temperature=None, steps=None, use_ema: bool = True,
             per_device_batch=None, chunk_size=None, chunk_dir=None,
             checkpoint_step=None) -> Plan:
  """Checks every argument and the chunk folder's manifest (recording it on first use) before
  anything is restored or compiled."""
  config_check.validate(config)
  if not out.endswith(".npz"):
    raise ValueError(f"--out must name a .npz file, got {out!r}")
  chunk_dir = chunk_dir or out[:-len(".npz")] + "_chunks"
  chunk_store.check_path(out, "--out")
  chunk_store.check_path(chunk_dir, "--chunk_dir")
  classes = list(range(config.data.num_classes)) if classes is None else list(classes)
  classes = ar_loop.check_labels(classes, config.data.num_classes).tolist()
  num_images = PER_CLASS * len(classes) if num_images is None else num_images
  per_device_batch = config.sample.batch_size if per_device_batch is None else per_device_batch
  for name, value in (("num_images", num_images), ("per_device_batch", per_device_batch),
                      ("chunk_size", chunk_size)):
    if value is not None and (not isinstance(value, int) or value <= 0):
      raise ValueError(f"--{name} must be a positive integer, got {value!r}")
  settings = ar_loop.SampleSettings.from_config(config.sample, cfg=cfg, temperature=temperature,
                                                num_steps=steps)
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint, read_only=True)
  available = ckpt.all_steps()
  if not available:
    raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: train first with "
                            f"python -m pra_jax.main --config=... --workdir={workdir}")
  step = available[-1] if checkpoint_step is None else checkpoint_step
  if step not in available:
    raise ValueError(f"--checkpoint_step={step}: {ckpt.directory} holds steps {available}")
  run_record.check_readable(workdir, config)   # Another run's config (a seed, a size): refused.
  # The chunk size fixes the folder's layout: a rerun keeps the recorded one, whatever its
  # device count (the first run's default is one global batch).
  if chunk_size is None:
    recorded = chunk_store.read_manifest(chunk_dir) or {}
    chunk_size = recorded.get("chunk_size") or per_device_batch * jax.device_count()
  plan = Plan(out=out, chunk_dir=chunk_dir, workdir=workdir, step=step, use_ema=use_ema,
              seed=seed, settings=settings, classes=classes,
              labels_X=grids.class_rows(classes, -(-num_images // len(classes)))[:num_images],
              chunk_size=chunk_size, per_device_batch=per_device_batch)
  chunk_store.check_manifest(chunk_dir, _manifest(plan, config, ckpt.directory),
                              write=jax.process_index() == 0)
  return plan


def _generate_chunks(plan: Plan, config, todo: list[int]) -> tuple[bool, float]:
  """Generates and commits the chunks in `todo`; returns (preempted, images/s)."""
  process, processes = jax.process_index(), jax.process_count()
  mesh = data_parallel.sampling_mesh()
  model = restore.restore_weights(config, plan.workdir, plan.step, mesh, plan.use_ema)
  generator = data_parallel.DataParallelGenerator(model, mesh, plan.settings,
                                                  plan.per_device_batch)
  key = rng.stream(plan.seed, "sample")
  del model
  logging.info("Sampler compiled in %.1f s.", generator.compile_s)
  n = len(plan.labels_X)
  remaining = sum(end - start for start, end in map(plan.chunk_range, todo))
  stop, made, rate, t0 = _StopRequest(), 0, float("nan"), time.perf_counter()
  try:
    for i, c in enumerate(todo):
      start, end = plan.chunk_range(c)
      batches = []
      for first in range(start, end, generator.batch):  # All dispatched before any is fetched.
        index_B = np.arange(first, first + generator.batch)
        labels_B = plan.labels_X[np.minimum(index_B, end - 1)]  # Rows past the chunk: dropped.
        batches.append((index_B, generator.dispatch(index_B, labels_B, key)))
      rows = [generator.local_rows(images_B, index_B) for index_B, images_B in batches]
      index_X = np.concatenate([r[0] for r in rows])
      images_X = np.concatenate([r[1] for r in rows])
      mine = index_X < end
      chunk_store.write_part(plan.chunk_dir, c, process, processes, index_X[mine],
                              images_X[mine], plan.labels_X[index_X[mine]])
      stop_now = data_parallel.any_process(stop.requested)  # Every part is on disk now.
      made += end - start
      rate = made / (time.perf_counter() - t0)
      if process == 0:
        chunk_store.commit_chunk(plan.chunk_dir, c, processes, start, end)
        logging.info("Chunk %d/%d: %d of %d images done, %.2f images/s, ETA %s.", c + 1,
                     plan.num_chunks, n - remaining + made, n, rate,
                     _duration((remaining - made) / rate))
      if stop_now and i + 1 < len(todo):
        return True, rate
  finally:
    stop.restore()
  return False, rate


def _duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def preview_cells(labels_X: np.ndarray, classes, rows: int = 10, cols: int = 10):
  """The PNG grid's cells: the first `cols` images of each of the first `rows` classes."""
  per_class = -(-len(labels_X) // len(classes))
  return [np.flatnonzero(labels_X == c)[:min(cols, per_class)].tolist() for c in classes[:rows]]


def _merge(plan: Plan, config) -> None:
  """The ADM .npz from every committed chunk and the PNG grid, on process 0."""
  missing = np.flatnonzero(~chunk_store.finished_chunks(plan.chunk_dir, plan.num_chunks))
  if missing.size:
    raise RuntimeError(f"chunks {missing.tolist()[:10]} of {plan.chunk_dir} are not committed")
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  cells = preview_cells(plan.labels_X, plan.classes)
  os.makedirs(os.path.dirname(os.path.abspath(plan.out)), exist_ok=True)
  kept = chunk_store.merge(plan.chunk_dir, plan.chunk_size, plan.labels_X, shape, plan.out,
                            keep=[k for row in cells for k in row])
  cols = max(len(row) for row in cells)
  blank = np.full(shape, 255, np.uint8)  # A class short of images (the last of an uneven N).
  tiles = [kept[row[j]] if j < len(row) else blank for row in cells for j in range(cols)]
  grids.save_png(grids.image_grid(np.stack(tiles), rows=len(cells)), plan.png,
                 scale=max(1, 64 // shape[0]))


def sample_to_npz(config, workdir: str, out: str, **kwargs) -> dict:
  """Class-balanced samples from every device of every process, committed chunk by chunk under
  the chunk folder, then merged into the ADM .npz and a PNG grid beside it (see plan_run for
  the arguments). A rerun skips committed chunks and writes the same bytes as an uninterrupted
  run; a SIGTERM stops every process after the chunk at hand ('preempted' in the result)."""
  with cli.user_input():  # Every argument is checked there, before anything runs.
    plan = plan_run(config, workdir, out, **kwargs)
  done = chunk_store.finished_chunks(plan.chunk_dir, plan.num_chunks)
  done = data_parallel.broadcast_from_process_0(done)
  todo = [c for c in range(plan.num_chunks) if not done[c]]
  logging.info("Sampling %d images of step %d into %s: %d of %d chunks of %d already done; "
               "%d per device x %d devices on %d processes = batch %d; %s.",
               len(plan.labels_X), plan.step, plan.chunk_dir, plan.num_chunks - len(todo),
               plan.num_chunks, plan.chunk_size, plan.per_device_batch, jax.device_count(),
               jax.process_count(), plan.per_device_batch * jax.device_count(), plan.settings)
  preempted, rate = _generate_chunks(plan, config, todo) if todo else (False, float("nan"))
  result = {"plan": plan, "chunks_skipped": plan.num_chunks - len(todo), "images_per_s": rate,
            "preempted": preempted}
  if preempted:
    left = (~chunk_store.finished_chunks(plan.chunk_dir, plan.num_chunks)).sum()
    logging.warning("Preempted: %d of %d chunks left in %s; rerun the same command to finish.",
                    left, plan.num_chunks, plan.chunk_dir)
  elif jax.process_index() == 0:
    _merge(plan, config)
    logging.info("Wrote %d images of step %d to %s and %s.", len(plan.labels_X), plan.step,
                 plan.out, plan.png)
  return result
