"""Checks a config before anything compiles or loads data: one clear message per mistake."""

from pra_jax import rollout

_CHOICES = {
    "data.source": ("tfds", "folder", "digits", "photos", "synthetic"),
    "data.bad_images": ("skip", "raise"),
    "model.backbone.mlp_type": ("swiglu", "gelu"),
    "model.backbone.norm": ("rmsnorm", "layernorm"),
    "model.backbone.pos_emb": ("learned", "rope2d"),
    "model.backbone.dtype": ("float32", "bfloat16", "float16"),
    "model.head.prediction": ("v", "x", "eps"),
    "model.head.time_sampling": ("uniform", "logit_normal"),
    "model.state.norm": ("layernorm", "tanh", "none"),
    "train.lr_schedule": ("cosine", "constant"),
    "train.nonfinite": ("raise", "skip"),
    "sample.solver": ("euler", "heun"),
    "sample.cfg_schedule": ("constant", "linear"),
}
_POSITIVE = ("data.image_size", "data.num_classes", "model.patch_size", "model.backbone.width",
             "model.backbone.depth", "model.backbone.num_heads", "model.head.width",
             "model.head.num_draws", "model.state.dim", "train.batch_size", "train.num_steps",
             "sample.num_steps", "checkpoint.every")


def _get(config, dotted):
  node = config
  for part in dotted.split("."):
    node = node[part]
  return node


def validate(config) -> None:
  for key, allowed in _CHOICES.items():
    value = _get(config, key)
    if value not in allowed:
      raise ValueError(f"config {key}={value!r} is not one of {allowed}")
  for key in _POSITIVE:
    value = _get(config, key)
    if not isinstance(value, int) or value <= 0:
      raise ValueError(f"config {key} must be a positive integer, got {value!r}")
  if config.data.channels not in (1, 3):
    raise ValueError(f"config data.channels must be 1 or 3, got {config.data.channels!r}")
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
  rollout.check_config(config)
