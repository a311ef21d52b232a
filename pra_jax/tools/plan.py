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


def _argv_devices(argv) -> int | None:
  for i, arg in enumerate(argv):
    if arg.startswith("--devices="):
      return int(arg.split("=", 1)[1])
    if arg == "--devices" and i + 1 < len(argv):
      return int(argv[i + 1])
  return None


def fake_device_flags(num_devices: int, xla_flags: str = "") -> str:
  """XLA_FLAGS with the host platform's device count set to `num_devices`."""
  flag = "--xla_force_host_platform_device_count"
  kept = [f for f in xla_flags.split() if not f.startswith(flag)]
  return " ".join(kept + [f"{flag}={num_devices}"])


# Must run before anything imports jax: the device count is fixed when the backend starts.
if __name__ == "__main__" and "jax" not in sys.modules:
  os.environ["XLA_FLAGS"] = fake_device_flags(_argv_devices(sys.argv) or 1,
                                              os.environ.get("XLA_FLAGS", ""))
  os.environ.setdefault("JAX_PLATFORMS", "cpu")  # No GPU memory is taken on a GPU host.

import functools  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from pra_jax import config_check, sharding, train  # noqa: E402

GIB = 1024 ** 3

_FLAGS = {}


def _define_flags():
  """Only when run as a program: importing plan() must not claim --config and friends."""
  _FLAGS.update(
      config=config_flags.DEFINE_config_file("config", "configs/tiny.py", "Config to plan."),
      devices=flags.DEFINE_integer("devices", 1, "Fake CPU devices to compile for."),
      mesh=flags.DEFINE_multi_string(
          "mesh", [], "Mesh sizes, e.g. data=8,fsdp=8,tensor=1 (-1 fills); default: the "
          "config's. Repeat for several rows."),
      batch=flags.DEFINE_integer("batch", None, "Global batch (default: train.batch_size)."),
      remat=flags.DEFINE_multi_string(
          "remat", [], "backbone.remat_policy: none | full | a jax.checkpoint_policies name. "
          "Repeat for several rows."),
      accum=flags.DEFINE_multi_integer(
          "accum", [], "train.grad_accum_steps: microbatches per step (default: the config's). "
          "Repeat for several rows."),
      scan_layers=flags.DEFINE_bool("scan_layers", None, "Override backbone.scan_layers."),
      budget_gib=flags.DEFINE_float("budget_gib", 16.0, "Per-device memory to check against."))


def parse_mesh(text: str) -> dict[str, int]:
  """'data=8,fsdp=8,tensor=1' -> {'data': 8, 'fsdp': 8, 'tensor': 1} (missing axes are 1)."""
  out = {"data": 1, "fsdp": 1, "tensor": 1}
  for part in filter(None, text.split(",")):
    name, sep, size = part.partition("=")
    if not sep or name.strip() not in out:
      raise ValueError(f"--mesh takes axis=size pairs over data, fsdp, tensor; got {part!r}")
    out[name.strip()] = int(size)
  return out


def _bytes_per_device(tree) -> int:
  """Bytes one device holds of an abstract tree whose leaves carry shardings."""
  return sum(int(np.prod(l.sharding.shard_shape(l.shape), dtype=np.int64)) * l.dtype.itemsize
             for l in jax.tree.leaves(tree))


def abstract_train_state(config, mesh):
  """(graphdef, abstract state) of train.TrainBundle: shapes, dtypes and shardings only."""
  with sharding.use_mesh(mesh):
    bundle = nnx.eval_shape(lambda: train.TrainBundle(config))
  graphdef, state = nnx.split(bundle)
  # eval_shape leaves the specs on an abstract mesh; compiling needs the concrete devices.
  concrete = lambda l: jax.ShapeDtypeStruct(l.shape, l.dtype,
                                            sharding=NamedSharding(mesh, l.sharding.spec))
  return graphdef, jax.tree.map(concrete, state)


def abstract_batch(config, mesh, global_batch: int):
  """(images, labels) as the loop feeds them: uint8 images and int32 labels split over
  data x fsdp."""
  d = config.data
  split = sharding.batch_sharding(mesh)
  images = jax.ShapeDtypeStruct((global_batch, d.image_size, d.image_size, d.channels),
                                jnp.uint8, sharding=split)
  labels = jax.ShapeDtypeStruct((global_batch,), jnp.int32, sharding=split)
  return images, labels


def compile_train_step(config, mesh, global_batch: int):
  """The train step lowered and compiled exactly as train_and_evaluate jits it.

  Returns (compiled, abstract state, lower seconds, compile seconds).
  """
  graphdef, state = abstract_train_state(config, mesh)
  state_sharding = jax.tree.map(lambda l: l.sharding, state)
  step_fn = jax.jit(functools.partial(train.train_step, graphdef, config=config),
                    donate_argnums=0, out_shardings=(state_sharding, None))
  with sharding.use_mesh(mesh):
    t0 = time.perf_counter()
    lowered = step_fn.lower(state, *abstract_batch(config, mesh, global_batch))
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
  return compiled, state, t1 - t0, t2 - t1


def plan(config, num_devices: int, mesh_cfg=None, *, devices=None,
         budget_gib: float = 16.0) -> dict:
  """Compiles the train step of `config` for `num_devices` and returns its memory per device.

  Sizes are bytes per device. `peak` = arguments + temporaries + outputs not aliased to a
  donated argument: what must be resident at once, which is what a device's memory must hold.
  """
  if config.model.backbone.attention != "xla":
    config = config.copy_and_resolve_references()
    config.model.backbone.attention = "xla"  # The fused kernels need their platform (docstring).
  config_check.validate(config)
  devices = list(devices if devices is not None else jax.devices("cpu"))
  if len(devices) < num_devices:
    raise ValueError(
        f"planning for {num_devices} devices needs that many, but jax has {len(devices)}: run "
        f"`python -m pra_jax.tools.plan --devices={num_devices}`, or set XLA_FLAGS="
        f"--xla_force_host_platform_device_count={num_devices} before jax is imported")
  mesh_cfg = dict(mesh_cfg or config.sharding.mesh)
  mesh = sharding.make_mesh(mesh_cfg, devices[:num_devices])
  global_batch = config.train.batch_size
  if global_batch % sharding.batch_divisor(mesh):
    raise ValueError(f"global batch {global_batch} is not divisible by the data x fsdp mesh size "
                     f"{sharding.batch_divisor(mesh)}")
  config_check.check_microbatches(config, sharding.batch_divisor(mesh))

  compiled, state, lower_s, compile_s = compile_train_step(config, mesh, global_batch)
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  peak = (mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes
          - mem.alias_size_in_bytes)
  b = config.model.backbone
  return {
      "devices": num_devices,
      "mesh": dict(mesh.shape),
      "global_batch": global_batch,
      "per_device_batch": global_batch // sharding.batch_divisor(mesh),
      "grad_accum_steps": config.train.grad_accum_steps,
      "remat": b.remat_policy,
      "scan_layers": bool(b.scan_layers),
      "dtype": b.dtype,
      "num_params": int(sum(l.size for l in jax.tree.leaves(state["model"]))),
      "params": _bytes_per_device(state["model"]),
      "optimizer": _bytes_per_device(state["optimizer"]),
      "ema": _bytes_per_device(state["ema"]),
      "arguments": mem.argument_size_in_bytes,
      "outputs": mem.output_size_in_bytes,
      "aliased": mem.alias_size_in_bytes,
      "temp": mem.temp_size_in_bytes,
      "peak": peak,
      "budget": int(budget_gib * GIB),
      "fits": peak <= budget_gib * GIB,
      "flops_per_device": float(cost.get("flops", float("nan"))) if cost else float("nan"),
      "lower_s": lower_s,
      "compile_s": compile_s,
  }


HEADER = ("| config | devices | mesh d,f,t | batch/dev | accum | remat | scan | dtype | params (M) "
          "| param GiB | opt GiB | EMA GiB | temp GiB | peak GiB | fits | compile s |")


def format_row(name: str, r: dict) -> str:
  gib = lambda x: f"{x / GIB:.3g}"
  m = r["mesh"]
  budget = f"{r['budget'] / GIB:g}"
  return (f"| {name} | {r['devices']} | {m['data']},{m['fsdp']},{m['tensor']} "
          f"| {r['per_device_batch']} | {r['grad_accum_steps']} | {r['remat']} "
          f"| {'on' if r['scan_layers'] else 'off'} "
          f"| {r['dtype']} | {r['num_params'] / 1e6:.1f} | {gib(r['params'])} "
          f"| {gib(r['optimizer'])} | {gib(r['ema'])} | {gib(r['temp'])} | {gib(r['peak'])} "
          f"| {'yes' if r['fits'] else 'NO'} <= {budget} | {r['lower_s'] + r['compile_s']:.0f} |")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = {k: v.value for k, v in _FLAGS.items()}
  config = f["config"]
  name = os.path.splitext(os.path.basename(
      config_flags.get_config_filename(flags.FLAGS["config"])))[0]
  if f["batch"] is not None:
    config.train.batch_size = f["batch"]
  if f["scan_layers"] is not None:
    config.model.backbone.scan_layers = f["scan_layers"]
  meshes = [parse_mesh(m) for m in f["mesh"]] or [dict(config.sharding.mesh)]
  remats = f["remat"] or [config.model.backbone.remat_policy]
  accums = f["accum"] or [config.train.grad_accum_steps]
  print(HEADER, flush=True)
  for mesh_cfg in meshes:
    for accum in accums:
      for remat in remats:
        config.model.backbone.remat_policy = remat
        config.train.grad_accum_steps = accum
        result = plan(config, f["devices"], mesh_cfg, budget_gib=f["budget_gib"])
        print(format_row(name, result), flush=True)


if __name__ == "__main__":
  _define_flags()
  app.run(main)
