"""Every pra_jax config field, declared once: default, allowed values or range, role, meaning.

`configs/common.py` builds the base ConfigDict from these declarations (`defaults`); the size and
demo files in configs/ override a few values and stay ml-collections files, so
`--config.a.b=v` works for every field. The declarations are read by `config_check.validate`
(each value checked against its field), by `run_record` (which keys make a checkpoint another
run's), by `python -m pra_jax.tools.config_fields` (the listing and the README's table).

A field's role is part of its declaration, never a list kept beside it:
  IDENTITY  fixes the parameters' shapes or what they mean: a resume with another value is
            refused (the workdir holds another run's checkpoints);
  RUN_TIME  a resume may change it; the change is logged and appended to config_history.jsonl.
Fields marked [ours] are choices the paper does not pin down (see the README's method notes).
Allowed values come from the module that reads the field (head.SOLVERS, data.SOURCES, ...).
"""

import dataclasses
import enum
import math
from typing import Any

import ml_collections

from pra_jax import data, optim, rollout

from pra_jax.sampling import ar_loop
from pra_jax.models import attention, backbone, head, layers, state


class Role(enum.Enum):
  IDENTITY = "identity"
  RUN_TIME = "run-time"


IDENTITY, RUN_TIME = Role.IDENTITY, Role.RUN_TIME


@dataclasses.dataclass(frozen=True)
class Range:
  """Finite numbers from `low` to `high`; an int `low` on an int field asks for an integer."""
  low: float
  high: float = math.inf
  low_ok: bool = True      # `low` itself allowed.
  high_ok: bool = False    # `high` itself allowed.
  says: str = ""           # What a message calls the span ('' = the span itself).

  def __str__(self) -> str:
    if self.high == math.inf:
      return f"{'>=' if self.low_ok else '>'} {self.low}"
    return f"{'[' if self.low_ok else '('}{self.low}, {self.high}{']' if self.high_ok else ')'}"


POSITIVE = Range(1, says="a positive integer")   # Counts and sizes.
NON_NEGATIVE_INT = Range(0)
NON_NEGATIVE = Range(0.0)
FRACTION = Range(0.0, 1.0, high_ok=True)   # [0, 1]
DECAY = Range(0.0, 1.0)                     # [0, 1)


@dataclasses.dataclass(frozen=True)
class Field:
  key: str                 # Dotted path: 'model.backbone.attention'.
  default: Any
  role: Role               # Required: no field can be left out of the identity decision.
  doc: str
  choices: tuple | None = None   # The allowed values (a module's constant), or None.
  range: Range | None = None     # For numbers: the allowed span, or None.
  none_ok: bool = False          # None is allowed besides values of the default's type.

  def __post_init__(self):
    if not isinstance(self.role, Role):
      raise TypeError(f"config field {self.key}: role must be IDENTITY or RUN_TIME")
    if not self.doc.strip():
      raise TypeError(f"config field {self.key} has no comment")

  @property
  def type(self) -> type:
    return type(self.default)

  def describe_type(self) -> str:
    names = {bool: "True or False", str: "a string", int: "an integer", float: "a number",
             tuple: "a tuple"}
    return names[self.type] + (" or None" if self.none_ok else "")

  def allowed(self) -> str:
    """The allowed values as the listing and the README table print them."""
    if self.choices is not None:
      return " | ".join(repr(c) for c in self.choices)
    parts = [str(self.range)] if self.range is not None else [self.type.__name__]
    if self.none_ok:
      parts.append("None")
    return " or ".join(parts)


_D = layers.DTYPE_NAMES

FIELDS = (
    Field("seed", 0, IDENTITY, "Model init, data order and every training draw derive from it."),

    # -- data ---------------------------------------------------------------------------------
    Field("data.source", "tfds", IDENTITY,
          "'tfds' | 'folder' | 'digits' (built-in demo set) | 'photos' (crops of 10 bundled "
          "photographs, 1 class each; needs scikit-image installed, reads its files only) | "
          "'synthetic' (random images of the real shapes: a smoke test of compile, steps, "
          "checkpoint and resume, no data).", choices=data.SOURCES),
    Field("data.synthetic_examples", 100_000, RUN_TIME,
          "'synthetic': train split size (eval: a tenth).", range=POSITIVE),
    Field("data.tfds_name", "imagenet2012", IDENTITY,
          "TFDS dataset read with tfds.data_source (array_record)."),
    Field("data.tfds_data_dir", "", RUN_TIME,
          "Where the TFDS records are (a path or gs://); '' = $TFDS_DATA_DIR, else TFDS's "
          "default (~/tensorflow_datasets)."),
    Field("data.folder", "", RUN_TIME,
          "'folder': the train split's root, one subfolder of JPEG/PNG files per class; class "
          "ids follow the sorted subfolder names."),
    Field("data.eval_folder", "", RUN_TIME,
          "'folder': the held-out split's root in the same layout ('' = evaluate on `folder`, "
          "with a warning)."),
    Field("data.train_split", "train", RUN_TIME,
          "The split trained on: a TFDS split name (the other sources have a train and an eval "
          "split and also accept 'train')."),
    Field("data.eval_split", "validation", RUN_TIME,
          "The held-out split, the one name evaluation reads: a TFDS split name "
          "(imagenet2012's is 'validation'); the other sources have a train and an 'eval' split "
          "and take this name (or 'eval') for their held-out one."),
    Field("data.image_size", 256, IDENTITY,
          "Square images; must be divisible by model.patch_size.", range=POSITIVE),
    Field("data.channels", 3, IDENTITY, "Grayscale (1) or RGB (3).", choices=data.CHANNELS),
    Field("data.num_classes", 1000, IDENTITY,
          "Labels 0..num_classes-1; label num_classes is the null class.", range=POSITIVE),
    Field("data.random_flip", True, RUN_TIME, "Horizontal flips in training."),
    Field("data.bad_images", "skip", RUN_TIME,
          "An undecodable image: 'skip' (logged and counted) or 'raise'.",
          choices=data.BAD_IMAGE_MODES),
    Field("data.worker_count", 0, RUN_TIME,
          "grain worker processes per host (0 = in-process).", range=NON_NEGATIVE_INT),
    Field("data.worker_buffer_size", 2, RUN_TIME,
          "Batches each grain worker keeps ready (worker_count > 0).", range=POSITIVE),

    # -- model --------------------------------------------------------------------------------
    Field("model.patch_size", 16, IDENTITY,
          "16x16x3 = 768 pixels per patch at 256px: 256 tokens.", range=POSITIVE),
    Field("model.direct_pixel", False, IDENTITY,
          "True: no state; the head generates the P pixels itself."),
    Field("model.label_drop", 0.1, RUN_TIME,
          "[ours] Fraction of labels replaced by the null class (CFG).", range=DECAY),

    Field("model.backbone.width", 768, IDENTITY, "D: token width.", range=POSITIVE),
    Field("model.backbone.depth", 12, IDENTITY, "Transformer blocks.", range=POSITIVE),
    Field("model.backbone.num_heads", 12, IDENTITY,
          "Attention heads of width / num_heads (with rope2d a multiple of 4).", range=POSITIVE),
    Field("model.backbone.mlp_ratio", 4.0, IDENTITY, "MLP hidden width / width.",
          range=Range(0.0, low_ok=False)),
    Field("model.backbone.mlp_type", "swiglu", IDENTITY, "Gated (SwiGLU) or plain GELU MLP.",
          choices=layers.MLP_TYPES),
    Field("model.backbone.norm", "rmsnorm", IDENTITY, "The blocks' normalisation.",
          choices=layers.NORMS),
    Field("model.backbone.qk_norm", True, IDENTITY,
          "Queries and keys normalised per head (with `norm`) before their dot product, which "
          "keeps the attention logits bounded."),
    Field("model.backbone.pos_emb", "rope2d", IDENTITY, "Position encoding of the patches.",
          choices=backbone.POS_EMBS),
    Field("model.backbone.rope_theta", 10000.0, IDENTITY,
          "RoPE base wavelength (pos_emb='rope2d').", range=Range(0.0, low_ok=False)),
    Field("model.backbone.num_class_tokens", 1, IDENTITY, "Class tokens before the first patch.",
          range=POSITIVE),
    Field("model.backbone.scan_layers", True, IDENTITY,
          "One compiled layer under lax.scan: fast compiles at depth (the parameters are "
          "stacked, so the checkpoint's tree differs)."),
    Field("model.backbone.remat_policy", "none", RUN_TIME,
          "'none' | 'full' | any jax.checkpoint_policies name: memory against recompute of the "
          "same function."),
    Field("model.backbone.attention", "xla", RUN_TIME,
          "'xla' (any platform) | 'cudnn' (fused flash attention on NVIDIA GPUs, bf16/f16) | "
          "'splash' (TPU Pallas kernel, L a multiple of 128). The same function and parameters "
          "in every kernel; KV-cached decoding always uses 'xla'.",
          choices=attention.IMPLEMENTATIONS),
    Field("model.backbone.dtype", "float32", RUN_TIME,
          "Compute dtype; the parameters keep param_dtype.", choices=_D),
    Field("model.backbone.param_dtype", "float32", IDENTITY,
          "Parameter dtype (the optimizer state follows it).", choices=_D),

    Field("model.head.width", 1024, IDENTITY, "[ours] MAR-style AdaLN residual MLP.",
          range=POSITIVE),
    Field("model.head.depth", 6, IDENTITY, "AdaLN residual blocks.", range=POSITIVE),
    Field("model.head.prediction", "v", IDENTITY,
          "[ours] What the head outputs (rectified flow; the loss is in v-space).",
          choices=head.PREDICTIONS),
    Field("model.head.num_draws", 4, RUN_TIME,
          "[ours] Noise draws per position per step (a loss estimator).", range=POSITIVE),
    Field("model.head.time_sampling", "logit_normal", RUN_TIME,
          "Training-time law of the flow time.", choices=head.TIME_SAMPLINGS),
    Field("model.head.logit_mean", 0.0, RUN_TIME,
          "'logit_normal': t = sigmoid(logit_mean + logit_std * N(0, 1))."),
    Field("model.head.logit_std", 1.0, RUN_TIME,
          "(A larger std spends more steps near t = 0 and 1.)", range=NON_NEGATIVE),
    Field("model.head.dtype", "float32", RUN_TIME, "Compute dtype, as backbone.dtype.",
          choices=_D),
    Field("model.head.param_dtype", "float32", IDENTITY,
          "Parameter dtype, as backbone.param_dtype.", choices=_D),

    Field("model.state.dim", 16, IDENTITY, "Z: 16 in the paper's main experiments.",
          range=POSITIVE),
    Field("model.state.width", 512, IDENTITY, "[ours] Residual MLP width of E and G.",
          range=POSITIVE),
    Field("model.state.depth", 2, IDENTITY, "Residual blocks in E and in G each.",
          range=POSITIVE),
    Field("model.state.norm", "layernorm", IDENTITY,
          "[ours] 'layernorm' (unit scale per patch) | 'tanh' | 'none'.",
          choices=state.STATE_NORMS),
    Field("model.state.decoder_context", False, IDENTITY,
          "[ours] G also reads the backbone output h_i. The reconstruction loss never trains "
          "the backbone through it."),
    Field("model.state.project", True, IDENTITY,
          "[ours] G projects its input onto the states E can output (the norm above) before "
          "decoding: noised training inputs and sampled (CFG-extrapolated) states are decoded "
          "from the same set G is trained on. Same projection in training and sampling."),
    Field("model.state.dtype", "float32", RUN_TIME, "E and G compute dtype, as backbone.dtype.",
          choices=_D),
    Field("model.state.param_dtype", "float32", IDENTITY,
          "E and G parameter dtype, as backbone.param_dtype.", choices=_D),

    # -- the backbone's inputs (the ablation axis) ---------------------------------------------
    Field("rollout.mode", "pra", RUN_TIME,
          "What the backbone reads at each position (pra_jax.rollout's table says what each "
          "feeds).", choices=rollout.MODES),
    Field("rollout.sigma_law", "uniform", RUN_TIME,
          "[ours] 'fixed' (sigma) | 'uniform' (per position in [sigma_min, sigma_max]) | "
          "'schedule' (uniform, with the upper end ramped from sigma_min to sigma_max over "
          "schedule_steps).", choices=rollout.SIGMA_LAWS),
    Field("rollout.sigma", 0.5, RUN_TIME,
          "'fixed': the std of the Gaussian noise added to each state (states have unit RMS "
          "under state.norm='layernorm').", range=NON_NEGATIVE),
    Field("rollout.sigma_min", 0.0, RUN_TIME, "'uniform' / 'schedule': lower end of the sigma "
          "range.", range=NON_NEGATIVE),
    Field("rollout.sigma_max", 1.0, RUN_TIME, "'uniform' / 'schedule': upper end of the sigma "
          "range.", range=NON_NEGATIVE),
    Field("rollout.schedule_steps", 10000, RUN_TIME,
          "'schedule': training steps until the upper end is sigma_max.", range=NON_NEGATIVE_INT),
    Field("rollout.pixel_sigma", 0.1, RUN_TIME,
          "'pixel_noise': the same law, scaled for [-1, 1] pixels.", range=NON_NEGATIVE),
    Field("rollout.stop_gradient", True, RUN_TIME, "[ours] No gradient into the decoded inputs "
          "x_in."),
    Field("rollout.head_sample_steps", 4, RUN_TIME,
          "'head_sample' / 'exact': head ODE steps per position.", range=POSITIVE),
    Field("rollout.couple_t0", 0.5, RUN_TIME,
          "[ours] 'head_sample' / 'exact': the head ODE starts at t0 * E(x_i) + (1 - t0) * eps "
          "and runs from t0 to 1, so the sampled input stays tied to the image whose states are "
          "the targets. 0.5: noise and signal of equal size, the same noise-to-signal ratio as "
          "pra's largest sigma (sigma_max = 1 on a unit-RMS state). 1 = recon's inputs; 0 = a "
          "free sample that ignores its prefix (the model learns to ignore it too).",
          range=FRACTION),

    # -- loss ---------------------------------------------------------------------------------
    Field("loss.recon_weight", 1.0, RUN_TIME,
          "Weight of the L2 reconstruction term G(E(x)) vs x.", range=NON_NEGATIVE),

    # -- optimisation -------------------------------------------------------------------------
    Field("train.batch_size", 1024, RUN_TIME,
          "Global batch, split over all devices of all processes.", range=POSITIVE),
    Field("train.grad_accum_steps", 1, RUN_TIME,
          "Microbatches per update (one scan inside the step): the activations of batch_size / "
          "grad_accum_steps at a time. The per-device batch must divide by it.", range=POSITIVE),
    Field("train.num_steps", 400_000, RUN_TIME, "Optimizer updates in the whole run.",
          range=POSITIVE),
    Field("train.lr", 4e-4, RUN_TIME, "Peak learning rate, reached at the end of warmup.",
          range=Range(0.0, low_ok=False)),
    Field("train.lr_schedule", "cosine", RUN_TIME, "Both after linear warmup.",
          choices=optim.LR_SCHEDULES),
    Field("train.warmup_steps", 5000, RUN_TIME, "Steps of linear warmup from 0 to lr.",
          range=NON_NEGATIVE_INT),
    Field("train.min_lr_ratio", 0.0, RUN_TIME,
          "'cosine': the final learning rate, as a fraction of lr.", range=FRACTION),
    Field("train.weight_decay", 0.02, RUN_TIME,
          "AdamW's decoupled decay (scaled by the learning rate).", range=NON_NEGATIVE),
    Field("train.weight_decay_on", ("kernel", "embedding"), RUN_TIME,
          "[ours] Which parameters decay, by name: every dense kernel and the class-embedding "
          "table. Never decayed: norm scales (RMSNorm, LayerNorm, qk-norm), biases, and the "
          "position tables (`class_pos`, learned `pos`), which carry where a token sits rather "
          "than what it holds. Read from each parameter's path, so a scanned stack ([depth, "
          "...] scales) decays the same."),
    Field("train.b1", 0.9, RUN_TIME, "AdamW decay rate of the first moment.", range=DECAY),
    Field("train.b2", 0.95, RUN_TIME, "AdamW decay rate of the second moment.", range=DECAY),
    Field("train.grad_clip", 3.0, RUN_TIME, "Global-norm clip (0 = off).", range=NON_NEGATIVE),
    Field("train.ema_decay", 0.9999, RUN_TIME,
          "Per-update decay of the weight EMA that samples use (warmed up as (1 + n) / (10 + n) "
          "over the first updates).", range=DECAY),
    Field("train.ema_decays", (), IDENTITY,
          "More EMA decays kept beside ema_decay, each in [0, 1) and checkpointed (as ema_1, "
          "ema_2, ...) for the sweep to choose among (python -m pra_jax.sweep --weights); one more "
          "parameter copy each, in memory and in every checkpoint."),
    Field("train.nonfinite", "raise", RUN_TIME,
          "A non-finite loss: 'raise' (stop after the last good checkpoint) or 'skip'.",
          choices=optim.NONFINITE),
    Field("train.log_every", 100, RUN_TIME, "Steps between metric logs (stdout and "
          "TensorBoard).", range=Range(1)),
    Field("train.sample_every", 10_000, RUN_TIME,
          "Sample grid to TensorBoard and workdir/samples/ (0 = off).", range=NON_NEGATIVE_INT),
    Field("train.eval_every", 0, RUN_TIME,
          "Periodic quality evaluation (0 = off); see `eval` below.", range=NON_NEGATIVE_INT),
    Field("train.profile_steps", "", RUN_TIME,
          "'FIRST:STOP': jax.profiler trace of steps FIRST..STOP-1 into workdir/profile "
          "(TensorBoard's profile tab); '' = off."),

    # -- evaluation (periodic during training, and pra_jax.evaluate) ----------------------------
    # With data.source='digits' the periodic evaluation uses the digits judge instead (class
    # accuracy of samples, Frechet distance in its features); no files needed.
    Field("eval.num_images", 1000, RUN_TIME,
          "Samples per periodic evaluation (classes balanced).", range=Range(1)),
    Field("eval.inception_path", "", RUN_TIME,
          "FID weights (.npz, see pra_jax.tools.convert_inception)."),
    Field("eval.ref_path", "", RUN_TIME, "ADM reference batch (.npz with mu, sigma[, arr_0])."),
    Field("eval.batch_size", 100, RUN_TIME, "Inception batch.", range=Range(1)),

    # -- sharding -----------------------------------------------------------------------------
    Field("sharding.mesh.data", -1, RUN_TIME, "Data-parallel axis size (-1 = fill)."),
    Field("sharding.mesh.fsdp", 1, RUN_TIME, "Parameter-sharding axis size (-1 = fill)."),
    Field("sharding.mesh.tensor", 1, RUN_TIME, "Tensor-parallel axis size (-1 = fill)."),

    # -- checkpoints --------------------------------------------------------------------------
    Field("checkpoint.every", 5000, RUN_TIME,
          "Steps between checkpoints (one is also saved at the end).", range=POSITIVE),
    Field("checkpoint.max_to_keep", 3, RUN_TIME,
          "Newest checkpoints kept (None = all; Orbax reads 0 as 'keep none', which would delete "
          "the resumed run's own checkpoint, so 0 is refused).", range=POSITIVE, none_ok=True),
    Field("checkpoint.async_save", True, RUN_TIME,
          "Write checkpoints in the background while training runs."),

    # -- sampling -----------------------------------------------------------------------------
    Field("sample.num_steps", 8, RUN_TIME,
          "Head ODE steps per patch. Heun at 8 steps: on the digits demo (README, 'Head steps, "
          "step annealing and the sweep') it reached a judge's FD below Euler's at 50 steps "
          "(5.52 vs 5.58, 500 images, same keys) with 15 head calls per patch instead of 50, "
          "and more steps barely moved it (5.51 at 32); every annealed schedule lay above its "
          "solver's curve. The photos grid agrees (FD 28.2 at Heun 8, 27.7 at Euler 50). "
          "ImageNet's optimum may differ: rerun the grid (pra_jax.sweep) on the checkpoint you "
          "report.", range=POSITIVE),
    Field("sample.min_steps", 0, RUN_TIME,
          "Step annealing: 0 = off; else the head steps fall linearly from num_steps (first "
          "patch) to min_steps (last patch), at most num_steps.", range=NON_NEGATIVE_INT),
    Field("sample.solver", "heun", RUN_TIME,
          "The head's ODE integrator ('heun': two head calls per step, one on the last).",
          choices=head.SOLVERS),
    Field("sample.cfg", 3.0, RUN_TIME, "Guidance scale (0 = unconditional, 1 = none).",
          range=NON_NEGATIVE),
    Field("sample.cfg_schedule", "linear", RUN_TIME,
          "'constant' | 'linear' (1 + (cfg - 1) i / N at patch i of N: 1 at the first patch).",
          choices=ar_loop.CFG_SCHEDULES),
    Field("sample.temperature", 1.0, RUN_TIME,
          "Scales the head's initial noise (1 = the learned law).", range=NON_NEGATIVE),
    Field("sample.use_ema", True, RUN_TIME,
          "Sample the EMA weights (False: the raw trained ones)."),
    Field("sample.batch_size", 64, RUN_TIME,
          "Images per device per call (pra_jax.sample, the training grids and periodic evals "
          "alike).", range=Range(1)),
)

BY_KEY = {f.key: f for f in FIELDS}
assert len(BY_KEY) == len(FIELDS), "a config field is declared twice"


def defaults() -> ml_collections.ConfigDict:
  """The base config: every declared field at its default, sections in declaration order."""
  root = ml_collections.ConfigDict()
  for f in FIELDS:
    *sections, leaf = f.key.split(".")
    node = root
    for name in sections:
      if name not in node:
        node[name] = ml_collections.ConfigDict()
      node = node[name]
    node[leaf] = f.default
  return root


def role(key: str) -> Role:
  """A key's role; a key no declaration has (one a recorded config.json holds but the code no
  longer reads) cannot change what the parameters mean: run-time."""
  f = BY_KEY.get(key)
  return f.role if f is not None else RUN_TIME


def _default_text(f: Field) -> str:
  return repr(f.default)


def listing() -> str:
  """Every field, one block each: key, default, allowed values, role, comment (what
  `python -m pra_jax.tools.config_fields` prints)."""
  import textwrap
  blocks = []
  for f in FIELDS:
    head = f"{f.key} = {_default_text(f)}    [{f.role.value}; {f.allowed()}]"
    blocks.append(head + "\n" + textwrap.indent(textwrap.fill(f.doc, 92), "    "))
  return "\n".join(blocks)


def markdown_table() -> str:
  """The README's field table (tests/test_readme.py checks the README holds exactly this)."""
  def cell(text: str) -> str:
    return text.replace("|", "\\|")
  rows = ["| field | default | allowed | on resume | meaning |", "|---|---|---|---|---|"]
  for f in FIELDS:
    resume = "must match" if f.role is IDENTITY else "may change"
    rows.append(f"| `{f.key}` | `{cell(_default_text(f))}` | {cell(f.allowed())} | {resume} | "
                f"{cell(f.doc)} |")
  return "\n".join(rows)
