"""Ahead-of-time memory plan of the train step: compiled on abstract inputs, nothing allocated.

  python -m pra_jax.tools.plan --config=configs/pra_l.py --devices=64 \
      --mesh=data=8,fsdp=8,tensor=1 --batch=1024 --remat=full
  python -m pra_jax.tools.plan --config=configs/pra_l.py --devices=8 \
      --mesh=data=1,fsdp=8,tensor=1 --batch=1024 --accum=8 --remat=full

`--mesh`, `--remat` and `--accum` may be repeated (`--remat=none --remat=full`): one table row
per combination. With `--accum=J` (train.grad_accum_steps) the step holds the activations of one
microbatch, batch / J, plus a float32 gradient sum the size of the parameters.
Fake CPU devices stand in for the accelerators (XLA_FLAGS is set before jax is imported), so
the parameter, optimizer and EMA bytes per device are exact, while temporaries are XLA:CPU's
buffer assignment of the same sharded program: an estimate of what a TPU or GPU compile needs
(fusion and layouts differ), good for telling a setting that fits from one that does not. It
errs high for bfloat16 models: XLA:CPU computes bf16 matmuls in float32, so some saved
activations appear in both widths. A fused attention kernel (backbone.attention 'cudnn' or
'splash') cannot compile on CPU: such a config is planned with 'xla' attention, which keeps the
[L, L] attention logits that the fused kernels never store, so the plan errs high for it.
"""

import os
import sys

from pra_jax.tools import fake_devices

# Must run before anything imports jax: the device count is fixed when the backend starts.
if __name__ == "__main__" and "jax" not in sys.modules:
  os.environ["XLA_FLAGS"] = fake_devices.xla_flags(fake_devices.argv_devices(sys.argv) or 1,
                                                   os.environ.get("XLA_FLAGS", ""))
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # No GPU memory is taken on a GPU host.

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from pra_jax import cli, memory_plan  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", "configs/tiny.py", "Config to plan.")
_DEVICES = flags.DEFINE_integer("devices", 1, "Fake CPU devices to compile for.")
_MESH = flags.DEFINE_multi_string(
    "mesh", [], "Mesh sizes, e.g. data=8,fsdp=8,tensor=1 (-1 fills); default: the config's. "
    "Repeat for several rows.")
_BATCH = flags.DEFINE_integer("batch", None, "Global batch (default: train.batch_size).")
_REMAT = flags.DEFINE_multi_string(
    "remat", [], "backbone.remat_policy: none | full | a jax.checkpoint_policies name. Repeat "
    "for several rows.")
_ACCUM = flags.DEFINE_multi_integer(
    "accum", [], "train.grad_accum_steps: microbatches per step (default: the config's). Repeat "
    "for several rows.")
_SCAN_LAYERS = flags.DEFINE_bool("scan_layers", None, "Override backbone.scan_layers.")
_BUDGET_GIB = flags.DEFINE_float("budget_gib", 16.0, "Per-device memory to check against.")


def main(argv):
  if len(argv) > 1:
    cli.usage_error(f"unexpected arguments: {' '.join(argv[1:])}")
  for name, value in (("devices", _DEVICES.value), ("batch", _BATCH.value),
                      *(("accum", a) for a in _ACCUM.value)):
    if value is not None and value < 1:
      cli.usage_error(f"--{name} must be a positive integer, got {value}")
  if not 0 < _BUDGET_GIB.value < float("inf"):
    cli.usage_error(f"--budget_gib must be a positive number, got {_BUDGET_GIB.value}")
  config = _CONFIG.value
  name = os.path.splitext(os.path.basename(
      config_flags.get_config_filename(flags.FLAGS["config"])))[0]
  if _BATCH.value is not None:
    config.train.batch_size = _BATCH.value
  if _SCAN_LAYERS.value is not None:
    config.model.backbone.scan_layers = _SCAN_LAYERS.value
  with cli.user_input():
    try:
      meshes = [memory_plan.parse_mesh(m) for m in _MESH.value] or [dict(config.sharding.mesh)]
    except ValueError as e:   # int('x') says nothing of the flag.
      raise ValueError(f"--mesh={','.join(_MESH.value)}: {e}; expected e.g. "
                       f"data=8,fsdp=8,tensor=1") from None
  remats = _REMAT.value or [config.model.backbone.remat_policy]
  accums = _ACCUM.value or [config.train.grad_accum_steps]
  rows = [(mesh_cfg, accum, remat) for mesh_cfg in meshes for accum in accums for remat in remats]
  with cli.user_input():   # Every row's settings, before the first one compiles.
    for mesh_cfg, accum, remat in rows:
      config.model.backbone.remat_policy = remat
      config.train.grad_accum_steps = accum
      memory_plan.check(config, _DEVICES.value, mesh_cfg)
  print(memory_plan.HEADER, flush=True)
  for mesh_cfg, accum, remat in rows:
    config.model.backbone.remat_policy = remat
    config.train.grad_accum_steps = accum
    result = memory_plan.plan(config, _DEVICES.value, mesh_cfg, budget_gib=_BUDGET_GIB.value)
    print(memory_plan.format_row(name, result), flush=True)


if __name__ == "__main__":
  app.run(cli.one_line_errors(main), flags_parser=cli.parse_flags)
