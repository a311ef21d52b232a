"""Ahead-of-time memory plan of the train step: the step compiled on abstract inputs for a mesh
of devices, nothing allocated, and its bytes per device. The devices are fake CPU devices (an
estimate by XLA:CPU) or a TPU slice's compile-only devices (pra_jax/targets.py: the TPU
compiler's own figures). `python -m pra_jax.tools.plan` prints it as a table;
pra_jax/tools/plan.py says how to read it (what is exact, what an estimate).
"""

import copy
import re
import time

import jax
import numpy as np

from pra_jax import config_check, sharding, train_step

GIB = 1024 ** 3
# The custom calls a fused attention kernel compiles to: Mosaic's (a Pallas TPU kernel, splash)
# and cuDNN's fused attention.
KERNEL_CALLS = {"tpu": ('custom_call_target="tpu_custom_call"', "Mosaic"),
                "gpu": ('custom_call_target="__cudnn$fmha', "cuDNN")}


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


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
                "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_ARRAY = re.compile(r"\b(pred|[su](?:8|16|32|64)|f16|bf16|f32|f64)\[([\d,]*)\]")
# An HLO instruction that moves data between devices, and its result shape(s).
_COLLECTIVE = re.compile(r"= (\(.*?\)|\S+) (all-reduce|all-gather|reduce-scatter|all-to-all|"
                         r"collective-permute|ragged-all-to-all)(-start)?\(")


def _shape_bytes(text: str) -> list[int]:
  return [_DTYPE_BYTES[t] * int(np.prod([int(d) for d in dims.split(",") if d], dtype=np.int64))
          for t, dims in _ARRAY.findall(text)]


def collective_bytes(hlo_text: str) -> int:
  """Bytes the collectives of one compiled HLO module deliver per device, each instruction
  counted once (a loop body's once, like cost_analysis): the result of each all-reduce,
  all-gather, reduce-scatter, all-to-all and collective-permute. An asynchronous '-start' whose
  result is a tuple holds its operand and its result: the largest element is counted."""
  total = 0
  for shape, _, start in _COLLECTIVE.findall(hlo_text):
    sizes = _shape_bytes(shape)
    total += max(sizes, default=0) if (start and shape.startswith("(")) else sum(sizes)
  return total


def compiled_cost(compiled) -> dict:
  """FLOPs, bytes accessed and collective bytes per device of a compiled program, as the
  compiler reports them: the body of a loop (a scanned layer stack, the sampler's positions)
  counted once."""
  cost = compiled.cost_analysis()
  cost = (cost[0] if isinstance(cost, (list, tuple)) else cost) or {}
  return {"flops": float(cost.get("flops", float("nan"))),
          "bytes": float(cost.get("bytes accessed", float("nan"))),
          "collective_bytes": float(collective_bytes(compiled.as_text()))}


def step_cost(config, mesh, global_batch: int) -> dict:
  """Compiled cost per device of one whole train step, every layer and microbatch counted.

  Compiler cost analyses count a loop body once, so the scanned layer stack of the real step
  reads as one layer. The step is compiled twice more with the stack unrolled, 1 and 2 layers
  deep, for one microbatch: cost(depth) = outside + depth x one layer, and the step is
  J x (outside + depth x one layer). Memory comes from the real step, not from these.
  """
  num_micro = config.train.grad_accum_steps
  costs = []
  for depth in (1, 2):
    c = copy.deepcopy(config)
    c.model.backbone.scan_layers, c.model.backbone.depth = False, depth
    c.train.grad_accum_steps = 1
    costs.append(compiled_cost(train_step.compile_train_step(c, mesh, global_batch // num_micro)[0]))
  depth = config.model.backbone.depth
  return {k: num_micro * (2 * costs[0][k] - costs[1][k] + depth * (costs[1][k] - costs[0][k]))
          for k in costs[0]}


def check(config, num_devices: int, mesh_cfg=None, *, devices=None):
  """(config as planned, mesh): every reason the plan cannot be made, before it compiles.

  On CPU devices a fused attention kernel is planned as `xla` (the kernels need their platform);
  on compile-only TPU or GPU devices it is compiled for real."""
  devices = list(devices if devices is not None else jax.devices("cpu"))
  if config.model.backbone.attention != "xla" and devices[0].platform == "cpu":
    config = config.copy_and_resolve_references()
    config.model.backbone.attention = "xla"
  if len(devices) < num_devices:
    raise ValueError(
        f"planning for {num_devices} devices needs that many, but jax has {len(devices)}: run "
        f"`python -m pra_jax.tools.plan --devices={num_devices}`, or set XLA_FLAGS="
        f"--xla_force_host_platform_device_count={num_devices} before jax is imported")
  mesh_cfg = dict(mesh_cfg or config.sharding.mesh)
  mesh = sharding.make_mesh(mesh_cfg, devices[:num_devices])
  with sharding.use_mesh(mesh):  # The attention kernel is checked against the mesh's platform.
    config_check.validate(config)
  global_batch = config.train.batch_size
  if global_batch % sharding.batch_divisor(mesh):
    raise ValueError(f"global batch {global_batch} is not divisible by the data x fsdp mesh size "
                     f"{sharding.batch_divisor(mesh)}")
  config_check.check_microbatches(config, sharding.batch_divisor(mesh))
  return config, mesh


def compiler_out_of_memory(e: Exception) -> str | None:
  """The TPU compiler's refusal of a program larger than the chip's memory (RESOURCE_EXHAUSTED
  at compile time), as its one line; None for any other error. On such a target `fits` is the
  compiler's own answer, so the plan prints it as a row instead of failing."""
  text = str(e)
  if not isinstance(e, jax.errors.JaxRuntimeError) or "RESOURCE_EXHAUSTED" not in text:
    return None
  found = re.search(r"Ran out of memory[^\n]*", text)
  return (found.group(0) if found else text.splitlines()[0]).strip()


def _refused(why: str, devices, **fields) -> dict:
  """A plan row for a program the compiler refused: what is known, and why."""
  return {"refused": why, "platform": devices[0].platform, "device_kind": devices[0].device_kind,
          "devices": len(devices), **fields}


def _unless_out_of_memory(compile_fn):
  """(compile_fn(), None), or (None, the compiler's line) where the TPU compiler refuses the
  program for lack of memory; any other error propagates."""
  try:
    return compile_fn(), None
  except jax.errors.JaxRuntimeError as e:
    why = compiler_out_of_memory(e)
    if why is None:
      raise
    return None, why


def _costs_or_refusal(key: str, costs) -> dict:
  """{key: costs()}, or {"cost_refused": why} where the TPU compiler refuses a cost program: its
  pieces run with the layer stack unrolled, which may need more memory than the real program.
  The real program's row still stands."""
  value, why = _unless_out_of_memory(costs)
  return {key: value} if why is None else {"cost_refused": why}


def plan(config, num_devices: int, mesh_cfg=None, *, devices=None,
         budget_gib: float = 16.0, costs: bool = False) -> dict:
  """Compiles the train step of `config` for `num_devices` and returns its memory per device.

  Sizes are bytes per device. `peak` = arguments + temporaries + outputs not aliased to a
  donated argument: what must be resident at once, which is what a device's memory must hold.
  `devices` (default: this process's CPU devices) may be compile-only TPU devices
  (targets.devices): a fused attention kernel is then compiled for real. With `costs`, also
  the whole step's compiled cost per device (step_cost: two more compiles).
  """
  config, mesh = check(config, num_devices, mesh_cfg, devices=devices)
  devices = list(mesh.devices.flat)
  platform = devices[0].platform
  global_batch = config.train.batch_size

  b = config.model.backbone
  compiled_step, why = _unless_out_of_memory(
      lambda: train_step.compile_train_step(config, mesh, global_batch))
  if why is not None:
    return _refused(why, devices, attention=b.attention, mesh=dict(mesh.shape),
                    global_batch=global_batch, grad_accum_steps=config.train.grad_accum_steps,
                    per_device_batch=global_batch // sharding.batch_divisor(mesh),
                    remat=b.remat_policy, scan_layers=bool(b.scan_layers), dtype=b.dtype,
                    budget=int(budget_gib * GIB), fits=False)
  compiled, state, lower_s, compile_s = compiled_step
  ema_parts = train_step.ema_parts(config)
  mem = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  peak = (mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes
          - mem.alias_size_in_bytes)
  extra = {}
  if costs:
    t0 = time.perf_counter()
    extra = _costs_or_refusal("step_cost", lambda: step_cost(config, mesh, global_batch))
    extra["cost_compile_s"] = time.perf_counter() - t0
  return {
      "platform": platform,
      "device_kind": devices[0].device_kind,
      "attention": b.attention,
      "kernel_calls": (compiled.as_text().count(KERNEL_CALLS[platform][0])
                       if platform in KERNEL_CALLS else 0),
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
      # Every EMA the run keeps: train.ema_decay's and one more per train.ema_decays entry.
      "ema": sum(_bytes_per_device(state[part]) for part in ema_parts),
      "emas": len(ema_parts),
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
      **extra,
  }


HEADER = ("| config | target | chip | devices | mesh d,f,t | batch/dev | accum | remat | scan "
          "| dtype | attention | params (M) | param GiB | opt GiB | EMA GiB | temp GiB | peak GiB "
          "| fits | compile s |")
SAMPLE_HEADER = ("| config | target | chip | devices | batch/chip | rows | cfg | head steps "
                 "| weights GiB | KV cache GiB | temp GiB | peak GiB | fits | compile s |")


def _attention(r: dict) -> str:
  """The kernel compiled: 'splash (Mosaic x2)' names the custom calls found in the program."""
  kind = KERNEL_CALLS.get(r["platform"], ("", ""))[1]
  calls = f" ({kind} x{r['kernel_calls']})" if r["kernel_calls"] else ""
  return r["attention"] + calls


def format_row(name: str, r: dict, target: str = "cpu") -> str:
  gib = lambda x: f"{x / GIB:.3g}"
  m = r["mesh"]
  budget = f"{r['budget'] / GIB:.3g}"
  if "refused" in r:
    return (f"| {name} | {target} | {r['device_kind']} | {r['devices']} "
            f"| {m['data']},{m['fsdp']},{m['tensor']} | {r['per_device_batch']} "
            f"| {r['grad_accum_steps']} | {r['remat']} | {'on' if r['scan_layers'] else 'off'} "
            f"| {r['dtype']} | {r['attention']} | - | - | - | - | - | - "
            f"| NO <= {budget}: {r['refused']} | - |")
  return (f"| {name} | {target} | {r['device_kind']} | {r['devices']} "
          f"| {m['data']},{m['fsdp']},{m['tensor']} "
          f"| {r['per_device_batch']} | {r['grad_accum_steps']} | {r['remat']} "
          f"| {'on' if r['scan_layers'] else 'off'} "
          f"| {r['dtype']} | {_attention(r)} | {r['num_params'] / 1e6:.1f} | {gib(r['params'])} "
          f"| {gib(r['optimizer'])} | {gib(r['ema'])} | {gib(r['temp'])} | {gib(r['peak'])} "
          f"| {'yes' if r['fits'] else 'NO'} <= {budget} | {r['lower_s'] + r['compile_s']:.0f} |")


def head_steps(s) -> str:
  """'8 heun', or '50->4 euler' with step annealing."""
  return f"{s.num_steps}{f'->{s.min_steps}' if s.min_steps else ''} {s.solver}"


def format_sample_row(name: str, r: dict, target: str, budget_gib: float) -> str:
  gib = lambda x: f"{x / GIB:.3g}"
  s = r["settings"]
  if "refused" in r:
    return (f"| {name} | {target} | {r['device_kind']} | {r['devices']} | {r['per_device_batch']} "
            f"| {r['rows']} | {s.cfg:g} | {head_steps(s)} | - | {gib(r['kv_cache'])} "
            f"| - | - | NO <= {budget_gib:.3g}: {r['refused']} | - |")
  fits = "yes" if r["peak"] <= budget_gib * GIB else "NO"
  return (f"| {name} | {target} | {r['device_kind']} | {r['devices']} | {r['per_device_batch']} "
          f"| {r['rows']} | {s.cfg:g} | {head_steps(s)} | {gib(r['weights'])} "
          f"| {gib(r['kv_cache'])} | {gib(r['temp'])} | {gib(r['peak'])} "
          f"| {fits} <= {budget_gib:.3g} | {r['compile_s']:.0f} |")


def _abstract_weights(config, mesh):
  """(graphdef, weights as ShapeDtypeStructs replicated on `mesh`): what a sampler holds."""
  from flax import nnx

  from pra_jax.models import pra

  graphdef, abstract = nnx.split(pra.abstract_model(config, mesh))
  placed = sharding.replicated(mesh)
  return graphdef, jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=placed), abstract)


def sampler_cost(config, device, per_device_batch: int, settings) -> dict:
  """Compiled cost on one device of generating `per_device_batch` images, every loop counted.

  The sampler's loops (positions, the layer stack, head ODE steps) count once in a compiler's
  cost analysis, so two loop-free pieces are compiled with the layer stack unrolled: one
  position (a cached backbone step, one guided head evaluation, the decoder) and one more head
  evaluation. A batch is N positions (1 class token + N - 1 cached steps: N tokens) and
  N x (evaluations per patch - 1) more head evaluations; `time_s(chip)` of the result sums
  each piece's roofline.
  """
  from flax import nnx
  import jax.numpy as jnp

  from pra_jax.models import head as head_lib
  from pra_jax.sampling import annealing

  config = copy.deepcopy(config)
  config.model.backbone.scan_layers = False
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, [device])
  graphdef, state = _abstract_weights(config, mesh)
  model = nnx.merge(graphdef, state)
  b, guided = per_device_batch, settings.cfg != 1.0
  rows = 2 * b if guided else b
  placed = sharding.replicated(mesh)
  arg = lambda shape, dtype=jnp.float32: jax.ShapeDtypeStruct(shape, dtype, sharding=placed)
  cache = jax.tree.map(lambda c: arg(c.shape, c.dtype),
                       jax.eval_shape(lambda: model.backbone.init_cache(rows)))
  draw = lambda m, h_RD, z_BZ: head_lib.sample(
      m.head, h_RD[:b], z_BZ, num_steps=1, solver="euler",
      h_uncond_MD=h_RD[b:] if guided else None, cfg_scale=settings.cfg)

  def position(state, x_RP, cache):
    m = nnx.merge(graphdef, state)
    h_RD, cache = m.backbone.step(x_RP, jnp.int32(m.num_patches // 2), cache)
    g_BZ = draw(m, h_RD, jnp.zeros((b, m.gen_dim), jnp.float32))
    return m.decode(g_BZ, h_RD[:b]), cache

  def head_eval(state, h_RD, z_BZ):
    return draw(nnx.merge(graphdef, state), h_RD, z_BZ)

  width = config.model.backbone.width
  # The cache is donated, as the sampler's loop carries it: without that the piece holds the
  # cache twice (in and out), which the real program never does.
  pos = compiled_cost(jax.jit(position, donate_argnums=2).lower(
      state, arg((rows, model.patch_dim)), cache).compile())
  evl = compiled_cost(jax.jit(head_eval).lower(
      state, arg((rows, width)), arg((b, model.gen_dim))).compile())
  n = model.num_patches
  evals = annealing.head_evaluations(settings.num_steps, settings.min_steps, n, settings.solver)
  return {"position": pos, "head_eval": evl, "positions": n, "extra_head_evals": evals - n,
          "batch": b}


def sampler_time_s(cost: dict, peak_flops: float, bytes_per_s: float) -> float:
  """Roofline seconds of one batch of sampler_cost: each piece at the slower of compute and
  memory, times its count."""
  t = lambda c: max(c["flops"] / peak_flops, c["bytes"] / bytes_per_s)
  return cost["positions"] * t(cost["position"]) + cost["extra_head_evals"] * t(cost["head_eval"])


def plan_sampler(config, devices, per_device_batch: int, settings, *,
                 costs: bool = True) -> dict:
  """Compiles the data-parallel sampler (every device generates its own images from its own
  copy of the weights) for `devices` and returns its bytes per device, with the KV cache's
  share, and with `costs` the compiled cost of a batch (sampler_cost)."""
  from flax import nnx

  from pra_jax.sampling import data_parallel

  devices = list(devices)
  mesh = data_parallel.sampling_mesh(devices)
  with sharding.use_mesh(mesh):
    config_check.validate(config)
  graphdef, state = _abstract_weights(config, mesh)
  model = nnx.merge(graphdef, state)
  rows = per_device_batch * (2 if settings.cfg != 1.0 else 1)
  cache = jax.eval_shape(lambda: model.backbone.init_cache(rows))
  kv_cache = sum(int(np.prod(c.shape)) * c.dtype.itemsize for c in jax.tree.leaves(cache))
  t0 = time.perf_counter()
  gen, why = _unless_out_of_memory(lambda: data_parallel.DataParallelGenerator(
      model, mesh, settings, per_device_batch=per_device_batch))
  if why is not None:
    return _refused(why, devices, per_device_batch=per_device_batch, rows=rows,
                    settings=settings, kv_cache=kv_cache)
  compile_s = time.perf_counter() - t0
  mem = gen.compiled.memory_analysis()
  out = {
      "platform": devices[0].platform,
      "device_kind": devices[0].device_kind,
      "devices": len(devices),
      "per_device_batch": per_device_batch,
      "rows": rows,
      "settings": settings,
      "weights": _bytes_per_device(state),
      "kv_cache": kv_cache,
      "arguments": mem.argument_size_in_bytes,
      "temp": mem.temp_size_in_bytes,
      "outputs": mem.output_size_in_bytes,
      "peak": (mem.argument_size_in_bytes + mem.temp_size_in_bytes + mem.output_size_in_bytes
               - mem.alias_size_in_bytes),
      "compile_s": compile_s,
  }
  if costs:
    t0 = time.perf_counter()
    out.update(_costs_or_refusal(
        "cost", lambda: sampler_cost(config, devices[0], per_device_batch, settings)))
    out["cost_compile_s"] = time.perf_counter() - t0
  return out
