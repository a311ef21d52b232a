"""The train step's and the sampler's analytic FLOPs, and the step's measured rate beside
jnp.dot's, for bench_mfu, bench_input_pipeline and project_sampling.

What `train_step_flops` counts: matrix multiplies only (2 FLOPs per multiply-add) of every
dense layer, the attention scores and the attention-weighted values over the full L x L square
(the causal half is computed and masked, not skipped); the backward pass as twice the forward
for every part that receives a gradient, once more the forward for parts that run without
gradient (the decoded PRA inputs, no-grad passes); nothing for remat's recomputation (model
FLOPs, not hardware FLOPs), norms, activations, RoPE, the loss or the optimizer. The count is
cross-checked against XLA's own `cost_analysis()` of the same step compiled with the layer
stack unrolled (XLA counts a while loop's body once), which also counts elementwise work.
"""

import copy

import _common as C  # Puts the repository on sys.path.
import jax
import jax.numpy as jnp

from pra_jax import sharding, train_step
from pra_jax.models import layers
from pra_jax.sampling import annealing


def train_step_flops(config, batch: int) -> dict[str, float]:
  """Analytic FLOPs of one train step by component (see the module docstring for the rules)."""
  d, m = config.data, config.model
  b, h, s = m.backbone, m.head, m.state
  n = (d.image_size // m.patch_size) ** 2
  p = m.patch_size ** 2 * d.channels
  seq = b.num_class_tokens + n - 1                 # Tokens through the backbone.
  width, mlp = b.width, int(b.width * b.mlp_ratio)
  gated = 3 if b.mlp_type == "swiglu" else 2

  per_layer = seq * (2 * 4 * width ** 2 + 2 * gated * width * mlp) + 2 * 2 * seq * seq * width
  backbone = batch * (2 * (n - 1) * p * width + b.depth * per_layer)
  head_row, dec_row = _head_row(config), _decoder_row(config)
  head = batch * n * h.num_draws * head_row
  enc_row = 2 * (p * s.width + s.depth * 2 * s.width ** 2 + s.width * s.dim)
  encoder = 0 if m.direct_pixel else batch * n * enc_row
  decoder = 0 if m.direct_pixel else batch * n * dec_row

  out = {"backbone": 3 * backbone, "head": 3 * head, "encoder": 3 * encoder,
         "decoder": 3 * decoder}                      # Trained parts: forward + 2x backward.
  mode, r = config.rollout.mode, config.rollout
  inputs = 0.0                                         # Building the backbone's inputs.
  if mode in ("recon", "pra") and not m.direct_pixel:
    inputs += (1 if r.stop_gradient else 3) * decoder * (n - 1) / n
    if s.decoder_context:
      inputs += backbone
  elif mode == "head_sample":
    inputs += backbone + r.head_sample_steps * batch * (n - 1) * head_row + decoder * (n - 1) / n
  elif mode == "exact":
    inputs += backbone + r.head_sample_steps * batch * n * head_row + decoder
  out["inputs"] = inputs
  out["total"] = sum(out.values())
  return out


def _head_parts(config) -> dict[str, float]:
  """One head evaluation for one position, by part: 'time' the time MLP, 'cond' the condition's
  projection, 'body' the input projection, the AdaLN blocks (modulation 3w^2, two w^2 layers),
  the final modulation and output."""
  m = config.model
  w, width = m.head.width, m.backbone.width
  z = m.patch_size ** 2 * config.data.channels if m.direct_pixel else m.state.dim
  return {"time": 2 * (256 * w + w * w), "cond": 2 * width * w,
          "body": 2 * (z * w + m.head.depth * 5 * w * w + 2 * w * w + w * z)}


def _head_row(config) -> float:
  """One head evaluation for one position, every part computed for it (as training does)."""
  return sum(_head_parts(config).values())


def _decoder_row(config) -> float:
  """The pixel decoder G for one position (0 without a state)."""
  m, s = config.model, config.model.state
  if m.direct_pixel:
    return 0.0
  p = m.patch_size ** 2 * config.data.channels
  return 2 * (s.dim * s.width + s.depth * 2 * s.width ** 2 + s.width * p
              + (m.backbone.width * s.width if s.decoder_context else 0))


def sample_flops(config, num_steps: int | None = None, solver: str | None = None,
                 cfg: float | None = None, min_steps: int | None = None) -> dict[str, float]:
  """Analytic FLOPs of generating one image with the KV-cached sampler, by component.

  Counted as the sampler computes it (ar_loop.sample_patches), matmuls only: the backbone runs the
  class tokens (prefill) and N - 1 patch tokens, each through every layer's dense layers and
  attention against the whole cache buffer of C + N - 1 slots (masked, not skipped), on 2 rows
  with CFG (conditional and null class); the head runs N positions x num_steps ODE steps x
  (1 evaluation per Euler step, 2 per Heun step but 1 on each patch's last, which is Euler's),
  also on 2 rows with CFG (the condition's projection once per patch, the time MLP once per
  evaluation for all rows); the decoder turns each of the N states into pixels once (the
  conditional row only). Defaults: config.sample. With step annealing (min_steps > 0) patch i
  takes its scheduled steps instead (pra_jax.sampling.annealing.integrate).
  """
  sp, m = config.sample, config.model
  b = m.backbone
  num_steps = sp.num_steps if num_steps is None else num_steps
  solver = sp.solver if solver is None else solver
  rows = 2 if (sp.cfg if cfg is None else cfg) != 1.0 else 1
  n = (config.data.image_size // m.patch_size) ** 2
  p = m.patch_size ** 2 * config.data.channels
  width, mlp = b.width, int(b.width * b.mlp_ratio)
  gated = 3 if b.mlp_type == "swiglu" else 2
  cache_len = b.num_class_tokens + n - 1
  per_token = b.depth * (2 * (4 * width ** 2 + gated * width * mlp) + 2 * 2 * cache_len * width)
  backbone = rows * (cache_len * per_token + (n - 1) * 2 * p * width)
  min_steps = sp.get("min_steps", 0) if min_steps is None else min_steps
  evals = annealing.head_evaluations(num_steps, min_steps, n, solver)
  # The sampler computes the condition's projection once per patch and row, the time MLP once
  # per evaluation for all rows (head.guided_velocity), the rest per row and evaluation.
  parts = _head_parts(config)
  head = n * rows * parts["cond"] + evals * (parts["time"] + rows * parts["body"])
  out = {"backbone": backbone, "head": head,
         "decoder": n * _decoder_row(config)}
  out["total"] = sum(out.values())
  return out


def xla_flops(config, batch: int) -> float:
  """XLA's FLOP count of the same train step, compiled with the layer stack unrolled: its
  cost analysis counts a while loop's body once, so a scanned stack would count one layer."""
  config = copy.deepcopy(config)
  config.model.backbone.scan_layers = False
  mesh = sharding.make_mesh(config.sharding.mesh)
  compiled = train_step.compile_train_step(config, mesh, batch)[0]
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", float("nan"))) if cost else float("nan")


def measure(config, steps: int, matmul: int, cross_check: bool = True,
            sweep_sizes=None) -> dict:
  """Times the train step and a square jnp.dot, interleaved; returns the figures of the line.

  With sweep_sizes, C.matmul_peak_sweep runs first, before the step is built, and its best
  rate is the peak that MFU divides by ('peak_source': 'sweep'); without, the interleaved
  jnp.dot is ('interleaved'). Both rates are returned either way when the sweep runs.
  """
  batch = config.train.batch_size
  dtype = layers.dtype_of(config.model.backbone.dtype)
  sweep = C.matmul_peak_sweep(sweep_sizes, dtype) if sweep_sizes else None
  step = C.TrainStep(config)
  data = step.put(C.synthetic_batch(config, batch))
  step.compile(data)
  a = jax.random.normal(jax.random.key(0), (matmul, matmul), dtype)
  b = jax.random.normal(jax.random.key(1), (matmul, matmul), dtype)
  dot = jax.jit(jnp.dot)
  C.block(dot(a, b))
  C.block(step(data))
  step_s, dot_s = [], []
  for _ in range(steps):
    dot_s += C.time_calls(lambda: dot(a, b), 2, warmup=0)
    step_s += step.time(data, 1, warmup=0)
  flops = train_step_flops(config, batch)
  step_t, dot_t = C.median(step_s), C.median(dot_s)
  interleaved = 2 * matmul ** 3 / dot_t
  peak = sweep["best"] if sweep else interleaved
  achieved = flops["total"] / step_t
  return {"flops": flops, "xla_flops": xla_flops(config, batch) if cross_check else None,
          "step_s": step_t, "peak": peak, "peak_source": "sweep" if sweep else "interleaved",
          "interleaved_dot": interleaved, "sweep": sweep,
          "achieved": achieved, "mfu": achieved / peak, "images_per_s": batch / step_t,
          "batch": batch, "dtype": config.model.backbone.dtype}


# (name, chips, dense bf16 FLOP/s per chip)
MACHINES = (
    ("8x H100 SXM", 8, 989e12),
    ("TPU v5p-64 (32 chips)", 32, 459e12),
)


def projection(config, utilisation: float, num_images: int) -> tuple[dict, list[tuple]]:
  """(FLOPs per image by component, [(machine, chips, peak per chip, seconds)])."""
  if not 0.0 < utilisation <= 1.0:
    raise ValueError(f"utilisation must be in (0, 1], got {utilisation}")
  if num_images < 1:
    raise ValueError(f"num_images must be >= 1, got {num_images}")
  f = sample_flops(config)
  rows = [(name, chips, peak, num_images * f["total"] / (chips * peak * utilisation))
          for name, chips, peak in MACHINES]
  return f, rows
