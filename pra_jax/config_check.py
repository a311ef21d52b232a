"""Checks a config before anything compiles or loads data: one clear message per mistake.

Each field is checked against its declaration in `config_schema` (type, allowed values, range),
here and nowhere else; then the checks that span fields. The command line's handling of these
errors (one line, exit status 2) is `pra_jax.cli`.
"""

import difflib
import math

from flax import traverse_util

from pra_jax import config_schema, profiling, rollout
from pra_jax.models import attention, backbone


def flat_keys(config) -> list[str]:
  """Every leaf of a ConfigDict as a dotted key: ['seed', 'data.source', ...]."""
  return list(traverse_util.flatten_dict(config.to_dict(), sep="."))


def did_you_mean(key: str, config) -> str:
  """' (did you mean train.num_steps?)' for a misspelled dotted key, or ''."""
  keys = flat_keys(config)
  close = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
  if not close:  # Misspelled leaf under a right section: compare leaves within the section.
    section = key.rsplit(".", 1)[0]
    leaves = [k for k in keys if k.startswith(section + ".")]
    close = difflib.get_close_matches(key, leaves, n=1, cutoff=0.4)
  return f" (did you mean {' or '.join(close)}?)" if close else ""


def check_number(name: str, value, low, high, low_ok=True, high_ok=False, says="") -> None:
  """One message for a value outside the range (an int `low` asks for an integer); `says`
  names the span in the message instead of printing it."""
  integer = isinstance(low, int)
  ok = (isinstance(value, int) if integer else isinstance(value, (int, float)))
  ok = ok and not isinstance(value, bool) and math.isfinite(value)
  ok = ok and (value >= low if low_ok else value > low) and (
      value <= high if high_ok else value < high)
  if not ok:
    span = f"{'[' if low_ok else '('}{low}, {high}{']' if high_ok else ')'}"
    says = says or f"{'an integer' if integer else 'a number'} in {span}"
    raise ValueError(f"{name} must be {says}, got {value!r}")


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


def _type_ok(field: config_schema.Field, value) -> bool:
  if value is None:
    return field.none_ok
  want = field.type
  if want is bool or isinstance(value, bool):
    return want is bool and isinstance(value, bool)
  if want is float:
    return isinstance(value, (int, float))
  if want is tuple:   # Its items are checked with the field's meaning (validate, below).
    return isinstance(value, (tuple, list))
  return isinstance(value, want)


def check_field(field: config_schema.Field, value) -> None:
  """`value` against its declaration: type, allowed values, range (one message naming it)."""
  name = f"config {field.key}"
  if field.choices is not None:
    if value not in field.choices:
      raise ValueError(f"{name}={value!r} is not one of {field.choices}")
    return
  if not _type_ok(field, value):
    raise ValueError(f"{name} must be {field.describe_type()}, got {value!r}")
  if field.range is not None and value is not None:
    r = field.range
    low = int(r.low) if field.type is int else float(r.low)
    says = f"{r.says} (or None)" if r.says and field.none_ok else r.says
    check_number(name, value, low, r.high, r.low_ok, r.high_ok, says)


def check_finite(config) -> None:
  """Every float field of the config is a finite number: none has a meaning for inf or nan
  (rollout.sigma_max=inf would compile and turn the first step's loss non-finite)."""
  for key, value in traverse_util.flatten_dict(config.to_dict(), sep=".").items():
    if isinstance(value, float) and not math.isfinite(value):
      raise ValueError(f"config {key}={value} must be a finite number")


def validate(config) -> None:
  check_finite(config)
  for field in config_schema.FIELDS:
    try:
      value = _get(config, field.key)
    except (KeyError, AttributeError):
      raise ValueError(f"config has no field {field.key} (declared in pra_jax/config_schema.py): "
                       f"build configs from configs/common.py's base_config()") from None
    check_field(field, value)
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
  decays = config.train.ema_decays
  if isinstance(decays, str) or not all(
      isinstance(d, float) and 0.0 <= d < 1.0 for d in decays):
    raise ValueError(f"config train.ema_decays must be a tuple of floats in [0, 1), got "
                     f"{decays!r}")
  sp = config.sample
  if sp.min_steps > sp.num_steps:
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
