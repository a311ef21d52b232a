"""Ahead-of-time memory plan of the train step: the step compiled on abstract inputs for a mesh
of (fake) devices, nothing allocated, and its bytes per device. `python -m pra_jax.tools.plan`
prints it as a table; pra_jax/tools/plan.py says how to read it (what is exact, what an estimate).
"""

import jax
import numpy as np

from pra_jax import config_check, sharding, train_step

GIB = 1024 ** 3


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


def check(config, num_devices: int, mesh_cfg=None, *, devices=None):
  """(config as planned, mesh): every reason the plan cannot be made, before it compiles."""
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
  return config, mesh


def plan(config, num_devices: int, mesh_cfg=None, *, devices=None,
         budget_gib: float = 16.0) -> dict:
  """Compiles the train step of `config` for `num_devices` and returns its memory per device.

  Sizes are bytes per device. `peak` = arguments + temporaries + outputs not aliased to a
  donated argument: what must be resident at once, which is what a device's memory must hold.
  """
  config, mesh = check(config, num_devices, mesh_cfg, devices=devices)
  global_batch = config.train.batch_size
  compiled, state, lower_s, compile_s = train_step.compile_train_step(config, mesh, global_batch)
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
