"""Ahead-of-time plan of the train step or the sampler: compiled on abstract inputs, nothing
allocated, for a TPU slice (by the TPU compiler) or for fake CPU devices (an estimate).

  python -m pra_jax.tools.plan --config=configs/pra_l.py --target=v5p-64 \
      --mesh=data=4,fsdp=8,tensor=1 --batch=1024
  python -m pra_jax.tools.plan --config=configs/pra_l.py --target=v5p-64 --program=sample \
      --batch=64 --cfg=3
  python -m pra_jax.tools.plan --config=configs/pra_l.py --devices=64 \
      --mesh=data=8,fsdp=8,tensor=1 --batch=1024 --remat=full

--target is an accelerator type as `gcloud compute tpus tpu-vm create --accelerator-type`
takes it (v4-32, v5litepod-64, v5p-64, v6e-64, ...; pra_jax/targets.py maps each to its
topology and chip and cites the chip's numbers), `h100-N` (N H100 SXM GPUs, 8 per host; `h100`
is one host of 8; needs `pip install jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2`, no GPU;
memory only, and 'cudnn' attention compiles as cuDNN's kernel), or `cpu` (the default). A TPU target needs
libtpu (`pip install libtpu==0.0.42.1`; GPU users do not): the step is then compiled by the
TPU compiler for that slice's compile-only devices, one per chip, and its bytes per chip are
the compiler's own, checked against the chip's HBM; a program the TPU compiler refuses as
larger than the chip prints as a `NO` row with the compiler's line, and the next row follows.
Fused attention (backbone.attention 'splash') is compiled for real there, as a Mosaic kernel.

--program=train (default): `--batch` is the global batch. `--mesh`, `--remat` and `--accum`
may be repeated (`--remat=none --remat=full`): one table row per combination. With
`--accum=J` (train.grad_accum_steps) the step holds the activations of one microbatch,
batch / J, plus a float32 gradient sum the size of the parameters.
--program=sample: the data-parallel sampler (pra_jax.sample's program: each chip its own
copy of the weights and its own images), `--batch` images per chip (default
config.sample.batch_size), `--cfg` the guidance scale (default config.sample.cfg; 1 halves
the rows); the KV cache's share of the bytes per chip.

Estimates on a TPU target (a second table; `--nocosts` skips the extra compiles): the
compiled FLOPs and HBM bytes of one step per chip (XLA's cost analysis, which counts a loop
body once, so the stack is compiled again unrolled, 1 and 2 layers deep, and extrapolated;
the sampler as one position and one head evaluation), the model FLOPs of
benchmarks/_flops.py beside them (the difference is remat's recomputation and the
elementwise work), the bytes the collectives move per chip, and a roofline: a step takes at
least max(FLOPs / peak FLOP/s, bytes / HBM bandwidth). From it: an upper bound on MFU, the
days for train.num_steps steps, and the hours to sample FID-50K. A roofline leaves out:
collectives (ICI bandwidth and latency, and whether they overlap compute), the time between
kernels, pipeline bubbles and loop overheads, the attention kernel's own FLOPs (a Mosaic
call is opaque to the cost analysis; the model FLOPs count attention), how far the MXUs fall
short of peak on these shapes, the input pipeline, host work, checkpoints and evals. Real
steps are slower; read the days as a floor.

On `cpu` fake CPU devices stand in for the accelerators (XLA_FLAGS is set before jax is
imported), so the parameter, optimizer and EMA bytes per device are exact, while temporaries
are XLA:CPU's buffer assignment of the same sharded program: an estimate of what a TPU or GPU
compile needs (fusion and layouts differ). It errs high for bfloat16 models: XLA:CPU computes
bf16 matmuls in float32, so some saved activations appear in both widths. A fused attention
kernel cannot compile on CPU: such a config is planned with 'xla' attention there, which
keeps the [L, L] attention logits that the fused kernels never store.
"""

import math
import os
import sys

from pra_jax.tools import fake_devices

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Must run before anything imports jax: the device count is fixed when the backend starts.
if __name__ == "__main__" and "jax" not in sys.modules:
  os.environ["XLA_FLAGS"] = fake_devices.xla_flags(fake_devices.argv_devices(sys.argv) or 1,
                                                   os.environ.get("XLA_FLAGS", ""))
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # No GPU memory is taken on a GPU host.

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from pra_jax import cli, memory_plan, targets  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Config to plan.")
_TARGET = flags.DEFINE_string(
    "target", "cpu", "An accelerator type (v4-32, v5litepod-64, v5p-64, v6e-64, ...) to compile "
    "for with the TPU compiler (needs libtpu), or 'cpu': fake CPU devices (--devices).")
_PROGRAM = flags.DEFINE_enum("program", "train", ["train", "sample"], "What to compile.")
_DEVICES = flags.DEFINE_integer("devices", 1, "Fake CPU devices to compile for (--target=cpu).")
_MESH = flags.DEFINE_multi_string(
    "mesh", [], "Mesh sizes, e.g. data=8,fsdp=8,tensor=1 (-1 fills); default: the config's. "
    "Repeat for several rows.")
_BATCH = flags.DEFINE_integer(
    "batch", None, "train: global batch (default train.batch_size); sample: images per chip "
    "(default sample.batch_size).")
_CFG = flags.DEFINE_float("cfg", None, "sample: guidance scale (default sample.cfg).")
_REMAT = flags.DEFINE_multi_string(
    "remat", [], "backbone.remat_policy: none | full | a jax.checkpoint_policies name. Repeat "
    "for several rows.")
_ACCUM = flags.DEFINE_multi_integer(
    "accum", [], "train.grad_accum_steps: microbatches per step (default: the config's). Repeat "
    "for several rows.")
_SCAN_LAYERS = flags.DEFINE_bool("scan_layers", None, "Override backbone.scan_layers.")
_BUDGET_GIB = flags.DEFINE_float(
    "budget_gib", None, "Per-device memory to check against (default: the chip's HBM; 16 on cpu).")
_COSTS = flags.DEFINE_bool("costs", True, "On a TPU target, also compile the cost estimates.")
FID_IMAGES = 50_000

COST_HEADER = ("| config | target | mesh d,f,t | remat | compiled TFLOP/chip | model TFLOP/chip "
               "| compiled/model | HBM GB/chip | collective GB/chip | compute s | memory s "
               "| step s (roofline) | MFU <= | days for steps |")
SAMPLE_COST_HEADER = ("| config | target | batch/chip | cfg | compiled GFLOP/image "
                      "| model GFLOP/image | HBM GB/image | s/batch (roofline) | images/s/chip "
                      "| FID-50K hours |")


def _flops():
  """benchmarks/_flops.py, the analytic model FLOPs the benchmarks use."""
  path = os.path.join(REPO, "benchmarks")
  if path not in sys.path:
    sys.path.insert(0, path)
  import _flops  # pylint: disable=import-outside-toplevel
  return _flops


def _costed(target) -> bool:
  """Estimates need the compiler's cost analysis, which the TPU compiler gives and the CUDA
  plugin's compile-only path does not (it returns none)."""
  return bool(target) and target.chip is not targets.H100 and _COSTS.value


def _devices(target):
  if target is None:
    return None
  with cli.user_input():
    return targets.devices(target)


def _train(name, config, target, devices, budget_gib):
  with cli.user_input():
    try:
      meshes = [memory_plan.parse_mesh(m) for m in _MESH.value] or [dict(config.sharding.mesh)]
    except ValueError as e:   # int('x') says nothing of the flag.
      raise ValueError(f"--mesh={','.join(_MESH.value)}: {e}; expected e.g. "
                       f"data=8,fsdp=8,tensor=1") from None
  remats = _REMAT.value or [config.model.backbone.remat_policy]
  accums = _ACCUM.value or [config.train.grad_accum_steps]
  count = target.chips if target else _DEVICES.value
  label = target.name if target else "cpu"
  rows = [(mesh_cfg, accum, remat) for mesh_cfg in meshes for accum in accums for remat in remats]
  with cli.user_input():   # Every row's settings, before the first one compiles.
    for mesh_cfg, accum, remat in rows:
      config.model.backbone.remat_policy = remat
      config.train.grad_accum_steps = accum
      memory_plan.check(config, count, mesh_cfg, devices=devices)
  print(memory_plan.HEADER, flush=True)
  estimates, refused, per_ema, emas = [], [], {}, 1
  for mesh_cfg, accum, remat in rows:
    config.model.backbone.remat_policy = remat
    config.train.grad_accum_steps = accum
    with cli.user_input():
      r = memory_plan.plan(config, count, mesh_cfg, devices=devices, budget_gib=budget_gib,
                           costs=_costed(target))
    print(memory_plan.format_row(name, r, label), flush=True)
    mesh = "{data},{fsdp},{tensor}".format(**r["mesh"])
    if "refused" not in r:
      emas = r["emas"]
      per_ema.setdefault(r["ema"] // emas, []).append(mesh)
    if "cost_refused" in r:
      refused.append(f"{mesh}, remat {r['remat']}, accum {r['grad_accum_steps']}: "
                     f"{r['cost_refused']}")
    if "step_cost" in r:
      estimates.append(_train_estimate(name, config, target, r))
  for size, on in per_ema.items():
    # What train.ema_decays costs: each decay keeps one more float32 copy of the parameters.
    print(f"\nEMA GiB counts {emas} EMA(s): train.ema_decay's and one per train.ema_decays "
          f"entry. Each is {size / memory_plan.GIB:.3g} GiB per device on mesh "
          f"{' and '.join(sorted(set(on)))}, which one more decay adds to the state and to every "
          f"checkpoint.", flush=True)
  if estimates:
    print(f"\nEstimates, not measurements: {target.name} = {target.chips} x {target.chip.device_kind}, "
          f"peak {target.chip.peak_flops / 1e12:g} TFLOP/s bf16 and "
          f"{target.chip.hbm_bytes_per_s / 1e9:g} GB/s HBM per chip ({target.chip.source}); "
          f"a roofline leaves out collectives, gaps between kernels, the Mosaic kernel's "
          f"FLOPs and MXU efficiency (see --help).")
    print(COST_HEADER)
    for line in estimates:
      print(line, flush=True)
  for line in refused:
    print(f"\nNo estimate for mesh {line} (the cost program, compiled with the layer stack "
          f"unrolled, was refused by the TPU compiler; the row above is the real step's).")


def _train_estimate(name, config, target, r) -> str:
  chip, c = target.chip, r["step_cost"]
  model = _flops().train_step_flops(config, r["global_batch"])["total"] / target.chips
  compute_s, memory_s = c["flops"] / chip.peak_flops, c["bytes"] / chip.hbm_bytes_per_s
  step_s = max(compute_s, memory_s)
  steps = config.train.num_steps
  m = r["mesh"]
  return (f"| {name} | {target.name} | {m['data']},{m['fsdp']},{m['tensor']} | {r['remat']} "
          f"| {c['flops'] / 1e12:.3g} | {model / 1e12:.3g} | {c['flops'] / model:.2f} "
          f"| {c['bytes'] / 1e9:.3g} | {c['collective_bytes'] / 1e9:.3g} | {compute_s:.3g} "
          f"| {memory_s:.3g} | {step_s:.3g} | {100 * model / (step_s * chip.peak_flops):.0f}% "
          f"| {steps * step_s / 86400:.3g} ({steps} steps) |")


def _sample(name, config, target, devices, budget_gib):
  from pra_jax.sampling import ar_loop  # pylint: disable=import-outside-toplevel

  import jax  # pylint: disable=import-outside-toplevel

  per_chip = _BATCH.value or config.sample.batch_size
  with cli.user_input():
    settings = ar_loop.SampleSettings.from_config(config.sample, cfg=_CFG.value)
    devs = devices if devices is not None else jax.devices("cpu")[:_DEVICES.value]
    r = memory_plan.plan_sampler(config, devs, per_chip, settings,
                                 costs=_costed(target))
  label = target.name if target else "cpu"
  print(memory_plan.SAMPLE_HEADER)
  print(memory_plan.format_sample_row(name, r, label, budget_gib), flush=True)
  if "cost_refused" in r:
    print(f"\nNo estimate: the TPU compiler refused the cost program (one position and one head "
          f"evaluation with the layer stack unrolled; the row above is the real sampler's): "
          f"{r['cost_refused'].rstrip('.')}. A smaller --batch gives the estimate.")
  if "cost" not in r:
    return
  chip, c = target.chip, r["cost"]
  batch_s = memory_plan.sampler_time_s(c, chip.peak_flops, chip.hbm_bytes_per_s)
  per_batch = lambda k: (c["positions"] * c["position"][k]
                         + c["extra_head_evals"] * c["head_eval"][k])
  model = _flops().sample_flops(config, settings.num_steps, settings.solver, settings.cfg,
                                settings.min_steps)
  calls = math.ceil(FID_IMAGES / (per_chip * target.chips))
  print(f"\nEstimates, not measurements: {target.name} = {target.chips} x {chip.device_kind}, "
        f"peak {chip.peak_flops / 1e12:g} TFLOP/s bf16 and {chip.hbm_bytes_per_s / 1e9:g} GB/s "
        f"HBM per chip ({chip.source}); {memory_plan.head_steps(settings)} head steps, "
        f"cfg {settings.cfg} ({settings.cfg_schedule}); a roofline leaves out the gaps between "
        f"kernels, loop overheads and MXU efficiency (see --help).")
  print(SAMPLE_COST_HEADER)
  print(f"| {name} | {target.name} | {per_chip} | {settings.cfg:g} "
        f"| {per_batch('flops') / per_chip / 1e9:.4g} | {model['total'] / 1e9:.4g} "
        f"| {per_batch('bytes') / per_chip / 1e9:.3g} | {batch_s:.3g} "
        f"| {per_chip / batch_s:.3g} | {calls * batch_s / 3600:.3g} ({calls} calls) |", flush=True)


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  for name, value in (("devices", _DEVICES.value), ("batch", _BATCH.value),
                      *(("accum", a) for a in _ACCUM.value)):
    if value is not None and value < 1:
      cli.usage_error(f"--{name} must be a positive integer, got {value}")
  if _BUDGET_GIB.value is not None and not 0 < _BUDGET_GIB.value < float("inf"):
    cli.usage_error(f"--budget_gib must be a positive number, got {_BUDGET_GIB.value}")
  config = _CONFIG.value
  name = os.path.splitext(os.path.basename(
      config_flags.get_config_filename(flags.FLAGS["config"])))[0]
  target = None
  if _TARGET.value != "cpu":
    with cli.user_input():
      target = targets.parse(_TARGET.value)
    if flags.FLAGS["devices"].present:
      cli.usage_error(f"--devices is for --target=cpu; {target.name} has {target.chips} chips")
  budget_gib = _BUDGET_GIB.value or (target.chip.hbm_bytes / memory_plan.GIB if target else 16.0)
  if _SCAN_LAYERS.value is not None:
    config.model.backbone.scan_layers = _SCAN_LAYERS.value
  devices = _devices(target)
  if _PROGRAM.value == "sample":
    _sample(name, config, target, devices, budget_gib)
    return
  if _BATCH.value is not None:
    config.train.batch_size = _BATCH.value
  _train(name, config, target, devices, budget_gib)


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
