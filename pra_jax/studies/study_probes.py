"""The ablation study's linear probes: every run's frozen backbone probed at chosen blocks (cached
in the run's folder), raw pixels and an untrained backbone once per study as baselines, and the
probe section of ablation.md (pra_jax.ablate --probe_layers)."""

import os

from pra_jax import checkpoint, files, restore
from pra_jax.studies import report


def probe_run(config, workdir: str, layers) -> dict:
  """Held-out top-1 of a linear probe on the run's frozen backbone at each block in `layers`
  (pra_jax.probe's recipe): {str(layer): top-1}; cached in workdir/ablate_probe.json."""
  from pra_jax.studies import linear_probe
  step = max(checkpoint.Checkpointer(workdir, config.checkpoint, read_only=True).all_steps())
  key = {"step": step, "layers": list(layers), "epochs": linear_probe.DEFAULT_EPOCHS}
  path = os.path.join(workdir, "ablate_probe.json")
  cached = files.read_json(path)
  if cached is not None and cached.get("key") == key:
    return cached["top1"]
  model, _, _ = restore.restore_for_sampling(config, workdir)
  top1 = {str(l): linear_probe.probe(model, config, layer=l, pixels=False)["backbone_eval_top1"]
          for l in layers}
  files.write_json(path, {"key": key, "top1": top1}, indent=1)
  return top1


def probe_baselines(base, workdir: str, layers) -> dict:
  """The probe on raw pixels and on a freshly initialised backbone of the base config (seed
  base.seed): what a trained backbone must beat. Cached in workdir/probe_baselines.json."""
  from pra_jax.models import pra
  from pra_jax.studies import linear_probe
  key = {"layers": list(layers), "epochs": linear_probe.DEFAULT_EPOCHS, "seed": base.seed}
  path = os.path.join(workdir, "probe_baselines.json")
  cached = files.read_json(path)
  if cached is not None and cached.get("key") == key:
    return cached["top1"]
  model = pra.create_model(base)
  top1 = {}
  for i, l in enumerate(layers):
    r = linear_probe.probe(model, base, layer=l, pixels=i == 0)
    top1[f"untrained {l}"] = r["backbone_eval_top1"]
    if i == 0:
      top1["pixels"] = r["pixels_eval_top1"]
  files.write_json(path, {"key": key, "top1": top1}, indent=1)
  return top1


def probe_table(rows: list[dict], layers, baselines: dict) -> str:
  """The linear-probe section of ablation.md: held-out top-1 per run (mean +- std over seeds,
  then every seed) beside raw pixels and the untrained backbone."""
  cols = [str(l) for l in layers]
  head = ("| run | seeds | " + " | ".join(f"probe block {l}" for l in cols) + " |\n|---|---|"
          + "---|" * len(cols) + "\n")
  lines = ["", "## Linear probe of the frozen backbone", "",
           f"Held-out top-1 of a linear probe (pra_jax.probe's recipe) on the mean-pooled "
           f"features of each block (the last = -1, the final output), beside raw pixels "
           f"{baselines['pixels']:.3f} and a freshly initialised backbone (" + ", ".join(
               f"block {l} {baselines[f'untrained {l}']:.3f}" for l in cols) + ").", "", head]
  probed = [r for r in rows if r.get("probe")]
  details = []
  for name in dict.fromkeys(r["base"] for r in probed):
    members = [r for r in probed if r["base"] == name]
    cells = [report.mean_std([m["probe"][c] for m in members], ".3f") for c in cols]
    lines.append(f"| {name} | {len(members)} | " + " | ".join(cells) + " |\n")
    if len(members) > 1:
      details += [f"| {m['name']} | {m['seed']} | " + " | ".join(
          f"{m['probe'][c]:.3f}" for c in cols) + " |\n" for m in members]
  if details:
    lines += ["", "Per seed (seed offset in the second column):", "", head] + details
  return "\n".join(l.rstrip("\n") for l in lines) + "\n"
