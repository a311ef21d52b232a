"""The ablation study: each backbone input mode of the method, the direct-pixel baseline and a small
PRA sensitivity grid, trained with one budget and seed, scored by the digits judge and the gap.

  python -m pra_jax.ablate --config=configs/demo.py --workdir=/tmp/pra_ablation

Each run is an ordinary training workdir DIR/<run>/ (resumable; a run whose final checkpoint
exists is not retrained, a scored run is not rescored). The study writes DIR/ablation.md (the
table) and DIR/ablation.png (samples of every run side by side, one row per class).
"""

import dataclasses
import json
import logging as std_logging
import os
import time
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from PIL import Image, ImageDraw

from pra_jax import checkpoint, data, gap, sample, sampler, sharding

MODES = ("teacher", "pixel_noise", "recon", "pra", "head_sample", "exact", "direct_x")
DEFAULT_SIGMAS = (0.25, 0.5, 1.0, 2.0)
DEFAULT_STATE_DIMS = (3, 4, 8)
# Sized so the default study on configs/demo.py finishes within an hour on 2 idle CPU cores:
# 12 trained runs x 500 steps, 190-290 s each with compile, plus 25-70 s scoring a run; measured
# 3163 s for the whole study on an idle 2-core machine (README, "Does it work?").
DEFAULT_STEPS = 500
QUICK_STEPS = 3


@dataclasses.dataclass(frozen=True)
class Eval:
  """How every run is scored: the same for all, so their numbers compare."""
  num_samples: int = 500        # Generated images for the digits judge, classes balanced.
  gap_images: int | None = None  # Held-out images for the gap (None: the whole split).
  noise_draws: int = 16         # Flow-loss draws per position in the gap.
  num_rollouts: int = 2         # Own-input draws per image in the gap.
  per_class: int = 8            # Samples per class in the figure.
  seed: int = 0                 # Key of every evaluation draw.


QUICK_EVAL = Eval(num_samples=20, gap_images=10, noise_draws=1, num_rollouts=1, per_class=2)


@dataclasses.dataclass(frozen=True)
class Run:
  name: str
  group: str                    # 'mode' | 'sigma' | 'state_dim': the table section.
  changed: str                  # What differs from the base config, in words.
  overrides: tuple[tuple[str, Any], ...]


# ----------------------------------------------------------------------------- the runs

def _set(config, dotted: str, value):
  *parents, leaf = dotted.split(".")
  node = config
  for p in parents:
    node = node[p]
  if leaf not in node:
    raise KeyError(f"config has no field {dotted!r}")
  old = node[leaf]
  node[leaf] = type(old)(value) if isinstance(old, (int, float)) and not isinstance(old, bool) \
      else value


def mode_run(mode: str, base) -> Run:
  r = base.rollout
  law = (f"sigma={r.sigma:g}" if r.sigma_law == "fixed" else
         f"sigma ~ U[{r.sigma_min:g}, {r.sigma_max:g}]" + (" ramped" if r.sigma_law == "schedule"
                                                          else ""))
  described = {
      "teacher": "inputs x_i (ground-truth pixels)",
      "pixel_noise": f"inputs x_i + {r.pixel_sigma:g} sigma eps, {law}",
      "recon": "inputs G(E(x_i))",
      "pra": f"inputs G(E(x_i) + sigma eps), {law} (the method)",
      "head_sample": f"inputs G(z~_i), z~_i drawn by the head ({r.head_sample_steps} steps) "
                     "from h_i of a no-grad teacher-forced pass",
      "exact": f"inputs from the model's own sequential rollout, {r.head_sample_steps} head steps",
      "direct_x": "no state: the head generates the pixels (x-prediction); teacher inputs",
  }
  if mode not in described:
    raise ValueError(f"unknown mode {mode!r}: choose from {MODES}")
  if mode == "direct_x":
    overrides = (("rollout.mode", "teacher"), ("model.direct_pixel", True),
                 ("model.head.prediction", "x"))
  else:
    overrides = (("rollout.mode", mode),)
  return Run(mode, "mode", described[mode], overrides)


def sweep_runs(sigmas, state_dims, base) -> list[Run]:
  runs = [Run(f"pra_sigma{s:g}", "sigma", f"pra, sigma ~ U[{base.rollout.sigma_min:g}, {s:g}]",
              (("rollout.mode", "pra"), ("rollout.sigma_law", "uniform"),
               ("rollout.sigma_max", float(s))))
          for s in sigmas]
  runs += [Run(f"pra_z{z}", "state_dim", f"pra, state dim Z={z}",
               (("rollout.mode", "pra"), ("model.state.dim", int(z))))
           for z in state_dims]
  return runs


def run_config(base, run: Run, num_steps: int):
  """The base config with the run's overrides and the study's common training budget."""
  c = base.copy_and_resolve_references()
  for key, value in run.overrides:
    _set(c, key, value)
  t = c.train
  t.num_steps = num_steps
  t.warmup_steps = min(t.warmup_steps, max(1, num_steps // 5))
  t.sample_every = t.eval_every = 0     # The study samples and scores each run itself.
  # A killed study resumes each run from its newest checkpoint; tiny budgets save once.
  c.checkpoint.every = num_steps if num_steps < 100 else num_steps // 4
  return c


# ----------------------------------------------------------------------------- one run

def _read_json(path):
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_json(path, obj):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=1)
  os.replace(tmp, path)


def _final_step_saved(config, workdir: str) -> bool:
  if not os.path.isdir(checkpoint.checkpoint_dir(workdir)):
    return False
  ckpt = checkpoint.Checkpointer(workdir, config.checkpoint, read_only=True)
  return config.train.num_steps in ckpt.all_steps()


def check_budget(workdir: str, num_steps: int) -> None:
  """Resuming under another budget would mix two learning-rate schedules in one run: refuse."""
  budget = _read_json(os.path.join(workdir, "ablate_budget.json"))
  if budget is not None and budget["num_steps"] != num_steps:
    raise ValueError(f"{workdir} was trained with a budget of {budget['num_steps']} steps, not "
                     f"{num_steps}: use a new --workdir (or the old --num_steps)")


def train_run(config, workdir: str) -> dict:
  """Trains unless the final checkpoint exists; returns {'steps', 'wall_s', 'trained'}."""
  from pra_jax import train

  check_budget(workdir, config.train.num_steps)
  budget_path = os.path.join(workdir, "ablate_budget.json")
  record_path = os.path.join(workdir, "ablate_train.json")
  if _final_step_saved(config, workdir):
    record = _read_json(record_path) or {"steps": config.train.num_steps, "wall_s": None}
    return {**record, "trained": False}
  os.makedirs(workdir, exist_ok=True)
  _write_json(budget_path, {"num_steps": config.train.num_steps})
  start = time.time()
  metrics = train.train_and_evaluate(config, workdir)
  record = {"steps": config.train.num_steps, "wall_s": time.time() - start,
            "final_loss": metrics.get("train/total")}
  _write_json(record_path, record)
  return {**record, "trained": True}


def score_run(config, workdir: str, ev: Eval, judge_cache: str) -> dict:
  """Digits metrics of balanced samples and the gap summary; cached in workdir/ablate_eval.json."""
  from pra_jax.metrics import digits

  step = max(checkpoint.Checkpointer(workdir, config.checkpoint, read_only=True).all_steps())
  settings = sampler.SampleSettings.from_config(config.sample)
  key = {"eval": dataclasses.asdict(ev), "step": step, "settings": dataclasses.asdict(settings)}
  cache_path = os.path.join(workdir, "ablate_eval.json")
  samples_path = os.path.join(workdir, "ablate_samples.npz")
  cached = _read_json(cache_path)
  if cached is not None and cached.get("key") == key and os.path.exists(samples_path):
    return {**cached["scores"], "cached": True}
  start = time.time()
  model, step = sample.restore_model(config, workdir, use_ema=config.sample.use_ema)
  labels = (np.arange(ev.num_samples) % config.data.num_classes).astype(np.int32)
  with sharding.use_mesh(sharding.make_mesh(config.sharding.mesh)):
    images = sample.generate_many(model, labels, jax.random.key(ev.seed), settings,
                                  min(config.sample.batch_size, len(labels)))
    scores = digits.evaluate_digits(images, labels, judge_cache)
    held_images, held_labels = gap.held_out(config, ev.gap_images)
    result = gap.measure(model, held_images, held_labels, jax.random.key(ev.seed), settings,
                         noise_draws=ev.noise_draws, num_rollouts=ev.num_rollouts)
  gap.write(result, os.path.join(workdir, "gap"), step, title=f"{os.path.basename(workdir)}, "
            f"step {step}")
  np.savez(samples_path, arr_0=images, arr_1=labels)
  scores = {**scores, "step": step, "gap": gap.to_json(result), "eval_wall_s": time.time() - start}
  _write_json(cache_path, {"key": key, "scores": scores})
  return {**scores, "cached": False}


def real_reference(config, ev: Eval, judge_cache: str) -> dict:
  """The judge's scores of real training digits: the best a generator can hope for."""
  from pra_jax.metrics import digits

  images, labels = data.load_digits_split("train", config.data.image_size)
  n = min(ev.num_samples, len(labels))
  return digits.evaluate_digits(images[:n], labels[:n], judge_cache)


# ----------------------------------------------------------------------------- outputs

def _fmt(value, spec):
  return "n/a" if value is None else format(value, spec)


def write_table(path: str, rows: list[dict], base, num_steps: int, ev: Eval, reference: dict,
                total_wall_s: float) -> None:
  sections = {"mode": "Input modes (and the direct-pixel baseline)",
              "sigma": "Sensitivity: PRA noise level (sigma_law uniform, sigma_max varied)",
              "state_dim": "Sensitivity: state dimension Z (pra)"}
  t = base.train
  # The gap rounds its draws up to whole head calls: report what it used.
  draws = next((r["scores"]["gap"]["noise_draws"] for r in rows if r["scores"]), ev.noise_draws)
  lines = [
      "# Ablation: backbone input modes", "",
      f"Base config: data {base.data.source} {base.data.image_size}px, patch "
      f"{base.model.patch_size}, backbone {base.model.backbone.width}x"
      f"{base.model.backbone.depth}, head {base.model.head.width}x{base.model.head.depth}, "
      f"Z={base.model.state.dim}. Every run: {num_steps} steps, batch {t.batch_size}, lr "
      f"{t.lr:g} ({t.lr_schedule}, warmup {min(t.warmup_steps, max(1, num_steps // 5))}), "
      f"seed {base.seed}.",
      f"Scoring (EMA weights, fixed seed {ev.seed}): {ev.num_samples} samples, classes "
      f"balanced, sampler {base.sample.num_steps} head steps, cfg {base.sample.cfg:g} "
      f"({base.sample.cfg_schedule}); digits accuracy = the judge's agreement with the "
      f"requested class, digits FD = Frechet distance to the held-out digits in the judge's "
      f"features (judge accuracy on held-out digits: "
      f"{reference['digits_classifier_eval_accuracy']:.3f}).",
      f"Gap ({ev.gap_images or 'all'} held-out digits, {draws} flow-loss draws per "
      f"position, {ev.num_rollouts} input draws per image, same sampler): "
      "head loss per position with the model's own one-step samples as "
      "inputs ('own': each input patch drawn by the model given the image's true prefix) or its "
      "free-running generation of the class ('free'), divided by the teacher-forced loss; "
      "the mean of that ratio over positions 1..N-1. 1 = no train-inference gap. 'free' also "
      "grows because a new sample is not the held-out image. Loss magnitudes differ between "
      "state sizes and the direct-pixel baseline; the ratios compare.", "",
      "| run | what changed | steps | train wall (s) | digits acc | digits FD "
      "| gap own/teacher | gap free/teacher |",
      "|---|---|---|---|---|---|---|---|",
      f"| real digits (train split) | reference: {min(ev.num_samples, 1500)} real images "
      f"| - | - | {reference['digits_accuracy']:.3f} | {reference['digits_fd']:.2f} | - | - |",
  ]
  for group, title in sections.items():
    group_rows = [r for r in rows if r["group"] == group]
    if not group_rows:
      continue
    lines.append(f"| **{title}** | | | | | | | |")
    for r in group_rows:
      name = r["name"] if r["run_dir"] == r["name"] else f"{r['name']} (= {r['run_dir']})"
      if r["error"]:
        lines.append(f"| {name} | {r['changed']} | {r['steps']} | failed: {r['error']} "
                     f"| | | | |")
        continue
      s, g = r["scores"], r["scores"]["gap"]
      lines.append(
          f"| {name} | {r['changed']} | {r['steps']} | {_fmt(r['wall_s'], '.0f')} "
          f"| {s['digits_accuracy']:.3f} | {s['digits_fd']:.2f} "
          f"| {_fmt(g.get('ratio_own_mean'), '.3f')} | {_fmt(g.get('ratio_free_mean'), '.3f')} |")
  lines += ["", f"Study wall time this invocation: {total_wall_s:.0f} s (runs already trained "
            f"or scored are reused, so this can be less than the sum above; a resumed run's "
            f"train wall counts only the invocation that finished it). Per-run gap plots: "
            f"<run>/gap/; samples: ablation.png (a panel per run, a row per class).", ""]
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write("\n".join(lines))
  os.replace(tmp, path)


def write_figure(path: str, panels: list[tuple[str, np.ndarray]], scale: int = 2,
                 per_row: int = 7) -> None:
  """Labelled sample grids side by side, wrapped after per_row panels."""
  grids = [Image.fromarray(g[..., 0] if g.shape[-1] == 1 else g).convert("RGB") for _, g in panels]
  grids = [g.resize((g.width * scale, g.height * scale), Image.NEAREST) for g in grids]
  font = gap.label_font(12)
  label_w = max(ImageDraw.Draw(grids[0]).textlength(name, font=font) for name, _ in panels)
  w = max(max(g.width for g in grids), int(label_w) + 2)
  h = max(g.height for g in grids)
  label_h, pad = 18, 8
  cols = min(per_row, len(grids))
  rows = -(-len(grids) // cols)
  canvas = Image.new("RGB", (cols * (w + pad) + pad, rows * (h + label_h + pad) + pad),
                     (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for i, ((name, _), grid) in enumerate(zip(panels, grids)):
    r, c = divmod(i, cols)
    x, y = pad + c * (w + pad), pad + r * (h + label_h + pad)
    draw.text((x, y), name, fill=(0, 0, 0), font=font)
    canvas.paste(grid, (x, y + label_h))
  tmp = path + ".tmp.png"
  canvas.save(tmp)
  os.replace(tmp, path)


def _class_grid(images: np.ndarray, labels: np.ndarray, num_classes: int, per_class: int):
  picks = [np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)]
  per_class = min(len(p) for p in picks)
  chosen = np.concatenate([p[:per_class] for p in picks])
  return sample.image_grid(images[chosen], rows=num_classes)


# ----------------------------------------------------------------------------- the study

def plan(base, modes=MODES, sigmas=DEFAULT_SIGMAS, state_dims=DEFAULT_STATE_DIMS) -> list[Run]:
  return [mode_run(m, base) for m in modes] + sweep_runs(sigmas, state_dims, base)


def _one_run(run: Run, base, workdir: str, run_dir: str, num_steps: int, ev: Eval,
             judge_cache: str) -> dict:
  config = run_config(base, run, num_steps)
  rundir = os.path.join(workdir, run_dir)
  trained = train_run(config, rundir)
  if trained["trained"]:
    print(f"[ablate] {run.name}: trained {num_steps} steps in {trained['wall_s']:.1f} s "
          f"({trained['wall_s'] / num_steps:.3f} s/step with compile)", flush=True)
  else:
    print(f"[ablate] {run.name}: final checkpoint found in {rundir}, not retrained "
          f"(trained in {_fmt(trained['wall_s'], '.1f')} s)", flush=True)
  scores = score_run(config, rundir, ev, judge_cache)
  print(f"[ablate] {run.name}: digits acc {scores['digits_accuracy']:.3f}, FD "
        f"{scores['digits_fd']:.2f}, gap own/teacher {scores['gap']['ratio_own_mean']:.3f} "
        + ("(scores reused)" if scores["cached"] else
           f"(scored in {scores['eval_wall_s']:.1f} s)"), flush=True)
  return {"steps": trained["steps"], "wall_s": trained["wall_s"], "trained": trained["trained"],
          "scores": scores, "error": None}


def run_study(base, workdir: str, *, modes=MODES, sigmas=DEFAULT_SIGMAS,
              state_dims=DEFAULT_STATE_DIMS, num_steps: int | None = None, quick: bool = False,
              judge_cache: str | None = None, ev: Eval | None = None) -> dict:
  """Trains and scores every run; writes ablation.md and ablation.png; returns their paths and rows.

  Runs whose resolved configs coincide (e.g. the sigma sweep's value equal to the base config's)
  share one training directory. A run that fails (a diverging loss, say) is reported in the
  table and the study goes on; rerunning the study retries it from its last checkpoint.
  """
  start = time.time()
  base = base.copy_and_resolve_references()
  if quick:
    base.sample.num_steps = min(base.sample.num_steps, 2)
  num_steps = num_steps or (QUICK_STEPS if quick else DEFAULT_STEPS)
  ev = ev or (QUICK_EVAL if quick else Eval())
  judge_cache = judge_cache or os.path.join(workdir, "judge_cache")
  os.makedirs(workdir, exist_ok=True)
  runs = plan(base, modes, sigmas, state_dims)
  print(f"[ablate] {len(runs)} runs of {num_steps} steps in {workdir}", flush=True)
  dirs, done, rows = {}, {}, []
  for run in runs:
    dirs.setdefault(run_config(base, run, num_steps).to_json(), run.name)
  for run_dir in dirs.values():  # Before anything trains: a wrong budget is one clear error.
    check_budget(os.path.join(workdir, run_dir), num_steps)
  for run in runs:
    run_dir = dirs[run_config(base, run, num_steps).to_json()]
    if run_dir not in done:
      try:
        done[run_dir] = _one_run(run, base, workdir, run_dir, num_steps, ev, judge_cache)
      except Exception as e:  # pylint: disable=broad-except
        logging.exception("Run %s failed.", run.name)
        message = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
        print(f"[ablate] {run.name}: FAILED ({message}); the study goes on", flush=True)
        done[run_dir] = {"steps": num_steps, "wall_s": None, "trained": False, "scores": None,
                         "error": message}
    rows.append({"name": run.name, "group": run.group, "changed": run.changed,
                 "run_dir": run_dir, **done[run_dir]})
  reference = real_reference(base, ev, judge_cache)
  table = os.path.join(workdir, "ablation.md")
  write_table(table, rows, base, num_steps, ev, reference, time.time() - start)
  panels = []
  for row in rows:
    if row["run_dir"] != row["name"] or row["error"]:  # Aliases are shown once.
      continue
    with np.load(os.path.join(workdir, row["run_dir"], "ablate_samples.npz")) as f:
      panels.append((row["name"], _class_grid(f["arr_0"], f["arr_1"], base.data.num_classes,
                                              ev.per_class)))
  figure = os.path.join(workdir, "ablation.png")
  if panels:
    write_figure(figure, panels)
  print(f"[ablate] {len(rows)} runs in {time.time() - start:.0f} s: wrote {table} and {figure}",
        flush=True)
  return {"table": table, "figure": figure, "rows": rows,
          "failed": [r["name"] for r in rows if r["error"]]}


# ----------------------------------------------------------------------------- CLI

def _define_flags():
  """CLI flags, defined only when this module runs as the program."""
  return {
      "config": config_flags.DEFINE_config_file("config", "configs/demo.py", "Base config."),
      "workdir": flags.DEFINE_string("workdir", None, "Study directory: one subfolder per run."),
      "quick": flags.DEFINE_bool("quick", False, f"{QUICK_STEPS} steps a run and a handful of "
                                 "samples: a smoke test of the whole study."),
      "modes": flags.DEFINE_list("modes", list(MODES), f"Input modes to train, from {MODES}."),
      "sigmas": flags.DEFINE_list("sigmas", [f"{s:g}" for s in DEFAULT_SIGMAS],
                                  "PRA rollout.sigma_max values of the sweep ('' = none)."),
      "state_dims": flags.DEFINE_list("state_dims", [str(z) for z in DEFAULT_STATE_DIMS],
                                      "PRA model.state.dim values of the sweep ('' = none)."),
      "num_steps": flags.DEFINE_integer("num_steps", None, f"Training steps of every run "
                                        f"(default {DEFAULT_STEPS}, --quick {QUICK_STEPS})."),
      "num_samples": flags.DEFINE_integer("num_samples", None, "Samples scored per run."),
      "judge_cache": flags.DEFINE_string("judge_cache", None, "Digits judge cache "
                                         "(default WORKDIR/judge_cache)."),
  }


_FLAGS = {}


def _quiet_checkpoint_logs():
  """Orbax logs each file it writes; twelve runs of that bury the study's own lines."""
  logging.get_absl_handler().addFilter(
      lambda record: record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = {k: v.value for k, v in _FLAGS.items()}
  if f["workdir"] is None:
    raise app.UsageError("--workdir is required")
  unknown = sorted(set(f["modes"]) - set(MODES))
  if unknown:
    raise app.UsageError(f"--modes: unknown {unknown}; choose from {MODES}")
  ev = None
  if f["num_samples"]:
    ev = dataclasses.replace(QUICK_EVAL if f["quick"] else Eval(), num_samples=f["num_samples"])
  _quiet_checkpoint_logs()
  out = run_study(f["config"], f["workdir"], modes=tuple(f["modes"]),
                  sigmas=tuple(float(s) for s in f["sigmas"] if s),
                  state_dims=tuple(int(z) for z in f["state_dims"] if z),
                  num_steps=f["num_steps"], quick=f["quick"], judge_cache=f["judge_cache"], ev=ev)
  if out["failed"]:
    raise SystemExit(f"runs failed: {', '.join(out['failed'])} (see {out['table']}); rerun the "
                     f"same command to retry them")


if __name__ == "__main__":
  _FLAGS.update(_define_flags())
  app.run(main)
