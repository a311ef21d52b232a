"""Checks a config before anything compiles or loads data: one clear message per mistake.

Errors in what the user gave (flags, config keys and values, files, data) are marked as such
(`user_input`, `is_user_error`): the entry points print them as one line and exit with status 2.
"""

import contextlib
import difflib
import math
import sys

from pra_jax import data, optim, profiling, rollout

from pra_jax.sampling import ar_loop
from pra_jax.models import attention, backbone, head, layers, state

EXIT_USER_ERROR = 2

# Each field's allowed values, as the module that reads the field defines them (rollout.mode
# and rollout.sigma_law: rollout.check_config, below).
_CHOICES = {
    "data.source": data.SOURCES,
    "data.bad_images": data.BAD_IMAGE_MODES,
    "data.channels": data.CHANNELS,
    "model.backbone.mlp_type": layers.MLP_TYPES,
    "model.backbone.norm": layers.NORMS,
    "model.backbone.pos_emb": backbone.POS_EMBS,
    "model.backbone.dtype": layers.DTYPE_NAMES,
    "model.backbone.param_dtype": layers.DTYPE_NAMES,
    "model.backbone.attention": attention.IMPLEMENTATIONS,
    "model.head.prediction": head.PREDICTIONS,
    "model.head.time_sampling": head.TIME_SAMPLINGS,
    "model.head.dtype": layers.DTYPE_NAMES,
    "model.head.param_dtype": layers.DTYPE_NAMES,
    "model.state.norm": state.STATE_NORMS,
    "model.state.dtype": layers.DTYPE_NAMES,
    "model.state.param_dtype": layers.DTYPE_NAMES,
    "train.lr_schedule": optim.LR_SCHEDULES,
    "train.nonfinite": optim.NONFINITE,
    "sample.solver": head.SOLVERS,
    "sample.cfg_schedule": ar_loop.CFG_SCHEDULES,
}
_POSITIVE = ("data.image_size", "data.num_classes", "model.patch_size", "model.backbone.width",
             "model.backbone.depth", "model.backbone.num_heads", "model.head.width",
             "model.head.num_draws", "model.state.dim", "train.batch_size", "train.num_steps",
             "train.grad_accum_steps", "sample.num_steps", "checkpoint.every")


# (key, lowest, highest, lowest allowed?, highest allowed?): finite numbers in a range.
_RANGES = (
    ("train.lr", 0.0, math.inf, False, False),
    ("train.warmup_steps", 0, math.inf, True, False),
    ("train.min_lr_ratio", 0.0, 1.0, True, True),
    ("train.weight_decay", 0.0, math.inf, True, False),
    ("train.b1", 0.0, 1.0, True, False),
    ("train.b2", 0.0, 1.0, True, False),
    ("train.grad_clip", 0.0, math.inf, True, False),
    ("train.ema_decay", 0.0, 1.0, True, False),
    ("train.log_every", 1, math.inf, True, False),
    ("train.sample_every", 0, math.inf, True, False),
    ("train.eval_every", 0, math.inf, True, False),
    ("eval.num_images", 1, math.inf, True, False),
    ("eval.batch_size", 1, math.inf, True, False),
    ("sample.cfg", 0.0, math.inf, True, False),          # 0 = unconditional, 1 = no guidance.
    ("sample.temperature", 0.0, math.inf, True, False),
    ("sample.batch_size", 1, math.inf, True, False),
    ("sample.min_steps", 0, math.inf, True, False),      # 0 = no step annealing.
)


def mark_user_error(e: BaseException) -> BaseException:
  e.pra_jax_user_error = True
  return e


def is_user_error(e: BaseException) -> bool:
  return bool(getattr(e, "pra_jax_user_error", False))


@contextlib.contextmanager
def user_input():
  """ValueError / OSError raised inside come from what the user gave: mark them, keep the type."""
  try:
    yield
  except (ValueError, OSError) as e:
    raise mark_user_error(e)


def cli(main_fn):
  """Wraps an absl main: a user error is one line on stderr and exit status 2, no traceback."""
  def run(argv):
    from pra_jax import quiet
    quiet.quiet_library_logs()
    try:
      return main_fn(argv)
    except Exception as e:  # pylint: disable=broad-except
      if not is_user_error(e):
        raise
      print(one_line(e), file=sys.stderr, flush=True)
      sys.exit(EXIT_USER_ERROR)
  return run


def usage_error(message: str):
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(EXIT_USER_ERROR)


def parse_flags(argv, config_flag: str = "config"):
  """An absl flags_parser: a bad flag, an unknown --config.KEY override (with a "did you mean")
  or a config file that does not load is one line and exit status 2, not a traceback."""
  from absl import flags
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    usage_error(" ".join(str(e).split()))
  except Exception as e:  # pylint: disable=broad-except  # Raised by config_flags' overrides.
    usage_error(_override_message(argv, config_flag, e))


def _override_message(argv, config_flag: str, e: Exception) -> str:
  import runpy
  prefix = f"--{config_flag}"
  path = next((a.split("=", 1)[1] for a in argv if a.startswith(prefix + "=")), None)
  overrides = [a[len(prefix) + 1:].split("=", 1)[0] for a in argv
               if a.startswith(prefix + ".")]
  detail = " ".join(str(e).split()).replace("\\n", " ")
  if path is None:
    return f"--{config_flag} could not be read: {detail}"
  try:
    config = runpy.run_path(path)["get_config"]()
  except Exception as load_error:  # pylint: disable=broad-except
    return (f"--{config_flag}={path} does not load: {type(load_error).__name__}: "
            f"{' '.join(str(load_error).split())}")
  from pra_jax import checkpoint
  keys = checkpoint.flatten(config.to_dict())
  for key in overrides:
    if key not in keys and not any(k.startswith(key + ".") for k in keys):
      return (f"--{config_flag}.{key}: no such config key in {path}"
              f"{did_you_mean(key, config)}")
  return f"a --{config_flag}.* override was not accepted: {type(e).__name__}: {detail}"


def one_line(e: BaseException) -> str:
  """The message of a user error as the single line an entry point prints."""
  text = " ".join(str(e).split()) or type(e).__name__
  return f"error: {text}"


def did_you_mean(key: str, config) -> str:
  """' (did you mean train.num_steps?)' for a misspelled dotted key, or ''."""
  from pra_jax import checkpoint
  keys = list(checkpoint.flatten(config.to_dict()))
  close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
  if not close:  # Misspelled leaf under a right section: compare leaves within the section.
    section = key.rsplit(".", 1)[0]
    leaves = [k for k in keys if k.startswith(section + ".")]
    close = difflib.get_close_matches(key, leaves, n=1, cutoff=0.4)
  return f" (did you mean {' or '.join(close)}?)" if close else ""


def check_number(name: str, value, low, high, low_ok=True, high_ok=False) -> None:
  """One message for a value outside the range (an int `low` asks for an integer)."""
  integer = isinstance(low, int)
  ok = (isinstance(value, int) if integer else isinstance(value, (int, float)))
  ok = ok and not isinstance(value, bool) and math.isfinite(value)
  ok = ok and (value >= low if low_ok else value > low) and (
      value <= high if high_ok else value < high)
  if not ok:
    span = f"{'[' if low_ok else '('}{low}, {high}{']' if high_ok else ')'}"
    raise ValueError(f"{name} must be {'an integer' if integer else 'a number'} in {span}, got "
                     f"{value!r}")


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def set_field(config, dotted: str, value) -> None:
  """config['a.b.c'] = value for a field the schema has (an unknown one is a KeyError naming
  it, never a new field); a whole float for an int field is cast (a sweep's 8.0 -> 8)."""
  try:
    old = _get(config, dotted)
  except (KeyError, AttributeError):
    raise KeyError(f"config has no field {dotted!r}") from None
  if (isinstance(old, int) and not isinstance(old, bool) and isinstance(value, float)
      and value.is_integer()):
    value = int(value)
  config.update_from_flattened_dict({dotted: value})


def validate(config) -> None:
  for key, allowed in _CHOICES.items():
    value = _get(config, key)
    if value not in allowed:
      raise ValueError(f"config {key}={value!r} is not one of {allowed}")
  for key in _POSITIVE:
    value = _get(config, key)
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"config {key} must be a positive integer, got {value!r}")
  for key, low, high, low_ok, high_ok in _RANGES:
    check_number(f"config {key}", _get(config, key), low, high, low_ok, high_ok)
  keep = config.checkpoint.max_to_keep
  if keep is not None and (not isinstance(keep, int) or isinstance(keep, bool) or keep < 1):
    # Orbax reads 0 as "keep none": it would delete every checkpoint, the resumed run's included.
    raise ValueError(f"config checkpoint.max_to_keep must be a positive integer (or None to keep "
                     f"all), got {keep!r}")
  try:  # The model's own parser of the name.
    backbone.remat_policy(config.model.backbone.remat_policy)
  except ValueError as e:
    raise ValueError(f"config model.backbone.{e}") from None
  if config.data.image_size % config.model.patch_size:
    raise ValueError(f"config data.image_size={config.data.image_size} is not divisible by "
                     f"model.patch_size={config.model.patch_size}")
  b = config.model.backbone
  if b.width % b.num_heads or (b.pos_emb == "rope2d" and (b.width // b.num_heads) % 4):
    raise ValueError(f"config model.backbone.width={b.width} must split into num_heads="
                     f"{b.num_heads} heads (with rope2d, of a size divisible by 4)")
  st = config.model.state
  if st.norm == "layernorm" and st.dim < 3 and not config.model.direct_pixel:
    # Zero mean and unit RMS over Z values leave a (Z - 2)-sphere: at Z = 2 the state has two
    # possible values, one bit per patch, and training collapses (the Z = 2 ablation row).
    raise ValueError(f"config model.state.dim={st.dim} with model.state.norm='layernorm' leaves "
                     f"the state {max(st.dim - 2, 0)} degrees of freedom; use dim >= 3 or "
                     f"state.norm 'tanh' / 'none'")
  known = ("kernel", "embedding", "scale", "bias", "class_pos", "pos")
  bad = [n for n in config.train.weight_decay_on if n not in known]
  if isinstance(config.train.weight_decay_on, str) or bad:
    raise ValueError(f"config train.weight_decay_on={tuple(config.train.weight_decay_on)!r} must "
                     f"be a tuple of parameter names from {known}")
  if not isinstance(st.project, bool):
    raise ValueError(f"config model.state.project must be True or False, got {st.project!r}")
  if not 0.0 <= config.model.label_drop < 1.0:
    raise ValueError(f"config model.label_drop must be in [0, 1), got {config.model.label_drop}")
  decays = config.train.ema_decays
  if isinstance(decays, str) or not all(
      isinstance(d, float) and 0.0 <= d < 1.0 for d in decays):
    raise ValueError(f"config train.ema_decays must be a tuple of floats in [0, 1), got "
                     f"{decays!r}")
  sp = config.sample
  if not isinstance(sp.min_steps, int) or sp.min_steps > sp.num_steps:
    raise ValueError(f"config sample.min_steps must be an integer in [0, sample.num_steps = "
                     f"{sp.num_steps}] (0 = no annealing), got {sp.min_steps!r}")
  check_microbatches(config, 1)
  profiling.parse_steps(config.train.profile_steps)
  num_patches = (config.data.image_size // config.model.patch_size) ** 2
  attention.check(b, b.num_class_tokens + num_patches - 1)
  rollout.check_config(config)


def check_microbatches(config, batch_divisor: int) -> None:
  """The global batch must split into grad_accum_steps microbatches that each spread evenly
  over the `batch_divisor` (data x fsdp) devices the batch is sharded over."""
  t = config.train
  if t.batch_size % (batch_divisor * t.grad_accum_steps):
    per_device = (f", and the per-device batch {t.batch_size}/{batch_divisor} into them"
                  if batch_divisor > 1 else "")
    raise ValueError(f"config train.batch_size={t.batch_size} must split into "
                     f"train.grad_accum_steps={t.grad_accum_steps} equal microbatches"
                     f"{per_device} (batch_size divisible by {batch_divisor * t.grad_accum_steps})")
