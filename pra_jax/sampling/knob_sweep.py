"""The sweep behind `python -m pra_jax.sweep`: sampler knobs (guidance, temperature, head steps,
annealing, solver, schedule, which weights) scored on a fixed set of images per point.

One restore per weights, one compile per batch shape: cfg, temperature and the head steps per
patch are run-time arguments of one compiled data-parallel generator (data_parallel's
runtime_knobs); only the solver, the cfg schedule and guidance on/off (cfg = 1 halves the rows)
compile apart. Every point draws the same images (index k from (seed, k)) for the same labels,
so points differ by their knobs alone. Results go to sweep.json after each point (a rerun skips
the points it holds), then to a markdown table and a PNG plot beside it.
"""

import dataclasses
import itertools
import json
import os
import shlex
import time

import jax
import numpy as np
from absl import logging
from flax import nnx
from PIL import Image, ImageDraw

from pra_jax import cli, files, periodic_eval, restore, rng, train_step
from pra_jax.metrics import scoring
from pra_jax.sampling import annealing, ar_loop, data_parallel
from pra_jax.studies import report

FORMAT = 1
# The headline metric of each judge, lower is better: the one the best point is chosen by.
PRIMARY = ("fid", "digits_fd", "photos_fd")
SHOWN = ("fid", "sfid", "inception_score", "digits_accuracy", "digits_fd", "photos_accuracy",
         "photos_fd")
KNOBS = ("weights", "cfg", "temperature", "num_steps", "min_steps", "solver", "cfg_schedule")


@dataclasses.dataclass(frozen=True)
class Point:
  """One setting of every knob. weights: 'ema' (train.ema_decay), 'ema_<i>' (train.ema_decays[i-1])
  or 'raw'."""
  weights: str
  cfg: float
  temperature: float
  num_steps: int
  min_steps: int
  solver: str
  cfg_schedule: str

  def settings(self) -> ar_loop.SampleSettings:
    return ar_loop.SampleSettings(num_steps=self.num_steps, solver=self.solver, cfg=self.cfg,
                                  cfg_schedule=self.cfg_schedule,
                                  temperature=self.temperature, min_steps=self.min_steps)

  @property
  def name(self) -> str:
    return " ".join(f"{k}={getattr(self, k)}" for k in KNOBS)

  def compile_key(self) -> tuple:
    """What one compiled generator cannot vary at run time."""
    return (self.solver, self.cfg_schedule, self.cfg != 1.0)


def weights_names(config) -> dict:
  """{weights name: its EMA decay (None for the raw weights)} of a run."""
  names = {"ema": config.train.ema_decay, "raw": None}
  names.update({f"ema_{i}": d for i, d in enumerate(train_step.extra_ema_decays(config), 1)})
  return names


def grid(weights, cfg, temperature, num_steps, min_steps, solver, cfg_schedule,
         known_weights=("ema", "raw")) -> list[Point]:
  """Every combination of the given lists (a point's min_steps above its num_steps is left out:
  that schedule does not exist)."""
  points = [Point(*combo) for combo in itertools.product(
      weights, cfg, temperature, num_steps, min_steps, solver, cfg_schedule)]
  points = [p for p in points if p.min_steps <= p.num_steps]
  for p in points:
    p.settings()  # Raises on a bad value before anything is restored.
    if p.weights not in known_weights:
      raise ValueError(f"--weights must be among {', '.join(known_weights)} (ema_<i>: the "
                       f"run's train.ema_decays), got {p.weights!r}")
  return points


def primary(metrics: dict) -> tuple[str, float]:
  for name in PRIMARY:
    if name in metrics:
      return name, float(metrics[name])
  raise ValueError(f"no headline metric ({', '.join(PRIMARY)}) among {sorted(metrics)}")


def head_evaluations(point: Point, num_patches: int) -> int:
  """Head network calls per image at this point (annealing.integrate's count)."""
  return annealing.head_evaluations(point.num_steps, point.min_steps, num_patches, point.solver)


class Results:
  """sweep.json: the run it belongs to, then one record per finished point."""

  def __init__(self, path: str, header: dict):
    self.path, self.header, self.records = path, header, {}
    if os.path.exists(path):
      with open(path) as f:
        saved = json.load(f)
      if saved.get("header") != header:
        diff = {k: (saved.get("header", {}).get(k), v) for k, v in header.items()
                if saved.get("header", {}).get(k) != v}
        raise ValueError(f"{path} holds a sweep of another run or protocol (saved vs now: "
                         f"{diff}); use another --out_dir or delete it")
      self.records = {r["name"]: r for r in saved["points"]}

  def add(self, record: dict) -> None:
    self.records[record["name"]] = record
    files.write_json(self.path, {"header": self.header, "points": list(self.records.values())},
                     indent=1)


def run(config, workdir: str, out_dir: str, points: list[Point], *, num_images: int,
        seed: int, per_device_batch: int, step: int, command: list[str]) -> dict:
  """Samples and scores every point not yet in out_dir/sweep.json; writes the table and plot of
  every point the JSON holds. Returns {'records': [...], 'best': record}."""
  if jax.process_count() != 1:
    raise ValueError("the sweep runs in one process (on all its local devices); run it on one "
                     "host")
  os.makedirs(out_dir, exist_ok=True)
  header = {"format": FORMAT, "workdir": os.path.abspath(workdir), "step": step,
            "num_images": num_images, "seed": seed, "source": config.data.source}
  with cli.user_input():  # Another run's sweep.json in out_dir.
    results = Results(os.path.join(out_dir, "sweep.json"), header)
  todo = [p for p in points if p.name not in results.records]
  logging.info("Sweep of %d points (%d done before) at %d images each, step %d.", len(points),
               len(points) - len(todo), num_images, step)
  labels_X = periodic_eval.balanced_labels(num_images, config.data.num_classes)
  mesh = data_parallel.sampling_mesh()
  key = rng.stream(seed, "sample")   # The stream pra_jax.sample draws from: the same images.
  states, generators = {}, {}
  cache_dir = scoring.judge_cache_dir(os.path.join(workdir, "eval_cache"))
  # Points grouped so each weights is restored once and each compile made once.
  for p in sorted(todo, key=lambda p: (p.weights, p.compile_key())):
    if p.weights not in states:
      model = restore.restore_weights(config, workdir, step, mesh, p.weights)
      states[p.weights] = model
    model = states[p.weights]
    if p.compile_key() not in generators:
      generators[p.compile_key()] = data_parallel.DataParallelGenerator(
          model, mesh, p.settings(), per_device_batch, runtime_knobs=True)
      logging.info("Compiled %s in %.1f s.", p.compile_key(),
                   generators[p.compile_key()].compile_s)
    gen = generators[p.compile_key()]
    gen.state = gen.place(nnx.state(model))
    t0 = time.perf_counter()
    images = []
    for first in range(0, num_images, gen.batch):
      index_B = np.arange(first, first + gen.batch)
      labels_B = labels_X[np.minimum(index_B, num_images - 1)]
      images.append(gen.dispatch(index_B, labels_B, key, p.settings()))
    images_X = np.concatenate([np.asarray(jax.device_get(x)) for x in images])[:num_images]
    seconds = time.perf_counter() - t0
    metrics = periodic_eval.evaluate_samples(images_X, labels_X, config, cache_dir)
    record = {"name": p.name, **dataclasses.asdict(p),
              "metrics": {k: v for k, v in metrics.items() if not isinstance(v, str)},
              "ema_decay": weights_names(config)[p.weights],
              "images_per_s": num_images / seconds,
              "head_evaluations": head_evaluations(p, model.num_patches)}
    results.add(record)
    logging.info("%s: %s (%.2f images/s)", p.name, primary(metrics), record["images_per_s"])
  # Every point the folder holds (earlier runs' too: same run, step and protocol).
  records = list(results.records.values())
  best = min(records, key=lambda r: primary(r["metrics"])[1])
  write_table(records, best, os.path.join(out_dir, "sweep.md"), header, command)
  plot(records, os.path.join(out_dir, "sweep.png"))
  return {"records": records, "best": best}


def varying(records: list[dict]) -> list[str]:
  return [k for k in KNOBS if len({r[k] for r in records}) > 1] or ["cfg"]


def best_command(best: dict, workdir: str, step: int, seed: int) -> str:
  """The command that samples the full 50-per-class set at the best point. No --config:
  pra_jax.sample reads the run's own config.json, overrides included (a config file alone would
  miss an identity override such as train.ema_decays, and be refused)."""
  args = ["python", "-m", "pra_jax.sample", f"--workdir={workdir}",
          f"--out={os.path.join(workdir, 'samples_best.npz')}", f"--cfg={best['cfg']}",
          f"--temperature={best['temperature']}", f"--steps={best['num_steps']}",
          f"--anneal={best['min_steps']}", f"--solver={best['solver']}",
          f"--schedule={best['cfg_schedule']}",
          f"--checkpoint_step={step}", f"--seed={seed}"]
  if best["weights"] == "raw":
    args.append("--raw_weights")
  elif best["weights"] != "ema":
    args.append(f"--weights={best['weights']}")
  return shlex.join(args)


def write_table(records, best, path: str, header: dict, command: list[str]) -> None:
  shown = [k for k in SHOWN if any(k in r["metrics"] for r in records)]
  cols = varying(records)
  lines = [f"Sweep of step {header['step']} of {header['workdir']}, {header['num_images']} "
           f"images per point (seed {header['seed']}); `{shlex.join(command)}`", "",
           "| " + " | ".join(cols + shown + ["head evals / image", "images/s"]) + " |",
           "|" + "---|" * (len(cols) + len(shown) + 2)]
  for r in records:
    cells = [str(r[k]) for k in cols]
    cells += [f"{r['metrics'][k]:.3f}" if k in r["metrics"] else "" for k in shown]
    cells += [str(r["head_evaluations"]), f"{r['images_per_s']:.2f}"]
    mark = " **best**" if r is best else ""
    lines.append("| " + " | ".join(cells) + " |" + mark)
  name, value = primary(best["metrics"])
  lines += ["", f"Best by {name}: {best['name']} ({value:.3f})."]
  files.write_text(path, "\n".join(lines) + "\n")


_PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127)]


def plot(records, path: str) -> None:
  """The headline metric (and the judge's accuracy, where it has one) against the first varying
  numeric knob (cfg, else head steps as head evaluations per image, else temperature), one line
  per setting of the others."""
  name = primary(records[0]["metrics"])[0]
  moving = varying(records)
  x_knob = next((k for k in ("cfg", "num_steps", "temperature") if k in moving), "cfg")
  others = [k for k in moving if k != x_knob]
  # Head steps are read as their cost, so an annealed schedule sits where its calls put it.
  x_of = (lambda r: r["head_evaluations"]) if x_knob == "num_steps" else (lambda r: r[x_knob])
  x_knob = "head evaluations per image" if x_knob == "num_steps" else x_knob
  panels = [(name, f"{name} against {x_knob} (lower is better)")]
  accuracy = name.split("_")[0] + "_accuracy"
  if all(accuracy in r["metrics"] for r in records):
    panels.append((accuracy, f"{accuracy} against {x_knob} (higher is better)"))
  width, panel_h = 900, 420
  image = Image.new("RGB", (width, panel_h * len(panels)), (255, 255, 255))
  draw = ImageDraw.Draw(image)
  font = report.label_font(12)
  for row, (metric, title) in enumerate(panels):
    series = {}
    for r in records:
      label = " ".join(f"{k}={r[k]}" for k in others) or metric
      series.setdefault(label, []).append((x_of(r), r["metrics"][metric]))
    data = {k: (np.array([x for x, _ in sorted(v)], np.float64),
                np.array([y for _, y in sorted(v)], np.float64), np.zeros(len(v)))
            for k, v in series.items()}
    colours = {k: _PALETTE[i % len(_PALETTE)] for i, k in enumerate(data)}
    top = row * panel_h
    report.line_panel(draw, (70, top + 50, width - 280, top + panel_h - 40), data, title, font,
                      colours=colours, legend_x=width - 260)
  files.save_png(image, path)
