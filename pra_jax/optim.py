"""The optimizer (AdamW with warmup and cosine or constant decay) and the EMA of the weights."""

import jax
import jax.numpy as jnp
import optax

LR_SCHEDULES = ("cosine", "constant")
# What the trainer does with an update whose gradient or new weights are not finite (train.py's
# guard; the step itself always masks such an update out): stop, or count it and go on.
NONFINITE = ("raise", "skip")


def learning_rate_schedule(train_cfg):
  if train_cfg.lr_schedule not in LR_SCHEDULES:
    raise ValueError(f"train.lr_schedule must be one of {LR_SCHEDULES}, got "
                     f"{train_cfg.lr_schedule!r}")
  warmup = optax.linear_schedule(0.0, train_cfg.lr, max(train_cfg.warmup_steps, 1))
  if train_cfg.lr_schedule == "constant":
    after = optax.constant_schedule(train_cfg.lr)
  else:
    after = optax.cosine_decay_schedule(
        train_cfg.lr, max(train_cfg.num_steps - train_cfg.warmup_steps, 1),
        alpha=train_cfg.min_lr_ratio)
  return optax.join_schedules([warmup, after], [train_cfg.warmup_steps])


def param_name(path) -> str:
  """The parameter's own name at the end of its tree path: 'kernel', 'scale', 'class_pos' ...

  Read from the path, not the shape: a scanned layer stack gives every norm scale and bias a
  leading layer axis, so `ndim >= 2` would mistake them for matrices.
  """
  names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey) and isinstance(k.key, str)]
  names += [k.name for k in path if isinstance(k, jax.tree_util.GetAttrKey) and k.name != "value"]
  if not names:
    raise ValueError(f"cannot name the parameter at {jax.tree_util.keystr(path)}")
  return names[-1]


def decay_mask(params, decayed_names):
  """True for the parameters weight decay applies to (their name is in `decayed_names`)."""
  return jax.tree_util.tree_map_with_path(lambda path, _: param_name(path) in decayed_names,
                                          params)


def make_optimizer(train_cfg) -> optax.GradientTransformation:
  decayed = tuple(train_cfg.weight_decay_on)
  parts = [optax.clip_by_global_norm(train_cfg.grad_clip)] if train_cfg.grad_clip > 0 else []
  parts.append(optax.adamw(learning_rate_schedule(train_cfg), b1=train_cfg.b1, b2=train_cfg.b2,
                           weight_decay=train_cfg.weight_decay,
                           mask=lambda params: decay_mask(params, decayed)))
  return optax.chain(*parts)


def ema_decay_at(decay: float, num_updates):
  """The EMA decay after `num_updates`, warmed up as (1 + n) / (10 + n) so short runs average
  over their own history rather than over the random init."""
  n = jnp.asarray(num_updates, jnp.float32)
  return jnp.minimum(decay, (1.0 + n) / (10.0 + n))


def ema_update(ema_params, params, decay):
  return jax.tree.map(lambda e, p: e * decay + p.astype(e.dtype) * (1.0 - decay), ema_params, params)
