"""Linear probing of the frozen backbone: mean-pooled features of one layer (or of several,
concatenated), BatchNorm without affine + a linear classifier trained with optax, top-1 on the
held-out split.

  python -m pra_jax.probe --config=configs/demo.py --workdir=/tmp/pra_demo [--layer=2 | --layer=1,2,3]
  (the CLI: pra_jax/probe.py)

The backbone reads ground-truth pixels with the null class token, so no label reaches the
features; the class token positions are left out of the pool. The same recipe on raw pixels is
reported beside it as the baseline a useful representation must beat.
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from pra_jax import batching, data


def load_split(config, split: str, max_images: int | None = None):
  """(uint8 images, int32 labels) of a split, read through the project's data source."""
  source = data.make_source(config.data, split)
  n = len(source) if max_images is None else min(len(source), max_images)
  examples = [source[i] for i in range(n)]
  return (np.stack([e["image"] for e in examples]),
          np.asarray([e["label"] for e in examples], np.int32))


@nnx.jit(static_argnames=("layer",))
def _pooled_features(model, images_BHWC, layer):
  x_BNP = model.to_patches(images_BHWC)
  null_B = jnp.full((x_BNP.shape[0],), model.null_class, jnp.int32)
  return model.backbone.features(x_BNP[:, :-1], null_B, layer).mean(axis=1)


def backbone_features(model, images: np.ndarray, layer: int | Sequence[int] = -1,
                      batch_size: int = 256):
  """Mean-pooled features [n, D * len(layers)] of every image: one block's, or several blocks'
  concatenated (the last batch padded, then trimmed)."""
  layers = (layer,) if isinstance(layer, int) else tuple(layer)
  return batching.map_rows(
      lambda _, images_B: np.concatenate(
          [np.asarray(_pooled_features(model, jnp.asarray(images_B), l)) for l in layers],
          axis=-1),
      batch_size, images)


# Long enough that both probes fit their training split (raw digits pixels reach 100% train
# top-1 by ~300 epochs, 99.9% at 100): the comparison is then between converged classifiers.
DEFAULT_EPOCHS = 300


def linear_probe(train_x, train_y, eval_x, eval_y, num_classes: int, *,
                 epochs: int = DEFAULT_EPOCHS,
                 lr: float = 1e-2, weight_decay: float = 1e-4, batch_size: int = 256,
                 seed: int = 0) -> dict:
  """BatchNorm (no affine, train-set statistics) + linear layer; returns train/eval top-1."""
  train_x, eval_x = np.asarray(train_x, np.float32), np.asarray(eval_x, np.float32)
  # Normalising with the training statistics is what a BatchNorm without affine does at
  # evaluation time; computing them once over the frozen features is exact here.
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  norm = lambda f: (f - mean) / std
  xs, xe = jnp.asarray(norm(train_x)), jnp.asarray(norm(eval_x))
  ys, ye = jnp.asarray(train_y), jnp.asarray(eval_y)
  params = {"w": jnp.zeros((xs.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  steps_per_epoch = max(1, len(xs) // batch_size)
  tx = optax.adamw(optax.cosine_decay_schedule(lr, epochs * steps_per_epoch),
                   weight_decay=weight_decay)
  opt_state = tx.init(params)
  logits = lambda p, x: x @ p["w"] + p["b"]

  @jax.jit
  def epoch(params, opt_state, key):
    order = jax.random.permutation(key, len(xs))[:steps_per_epoch * batch_size]

    def step(carry, idx):
      params, opt_state = carry
      loss_fn = lambda p: optax.softmax_cross_entropy_with_integer_labels(
          logits(p, xs[idx]), ys[idx]).mean()
      grads = jax.grad(loss_fn)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None

    (params, opt_state), _ = jax.lax.scan(step, (params, opt_state),
                                          order.reshape(steps_per_epoch, -1))
    return params, opt_state

  key = jax.random.key(seed)
  for e in range(epochs):
    params, opt_state = epoch(params, opt_state, jax.random.fold_in(key, e))
  acc = lambda x, y: float(jnp.mean(jnp.argmax(logits(params, x), -1) == y))
  return {"train_top1": acc(xs, ys), "eval_top1": acc(xe, ye)}


def middle_layer(model) -> int:
  """The default probe layer: the block halfway up the backbone. Generative pretraining puts
  its most linearly separable features mid-depth, not at the output that feeds the head (Chen
  et al., "Generative Pretraining from Pixels", ICML 2020); on the digits demo the
  final layer also probes below the middle one (README, "Sampling and evaluation")."""
  return model.backbone.cfg.depth // 2


def probe(model, config, *, layer: int | Sequence[int] | None = None,
          max_train_images: int | None = None, epochs: int = DEFAULT_EPOCHS,
          control: bool = False, pixels: bool = True) -> dict:
  """Probe accuracy of the backbone's features and (`pixels`) of raw pixels on the same splits;
  with `control`, also of the same architecture freshly initialised (what training added)."""
  layer = middle_layer(model) if layer is None else layer
  train_im, train_y = load_split(config, config.data.train_split, max_train_images)
  eval_im, eval_y = load_split(config, config.data.eval_split)
  candidates = {
      "backbone": lambda: [backbone_features(model, im, layer) for im in (train_im, eval_im)],
  }
  if pixels:
    candidates["pixels"] = lambda: [im.reshape(len(im), -1).astype(np.float32) / 255.0
                                    for im in (train_im, eval_im)]
  if control:
    from pra_jax.models import pra  # Only the control needs a second model.
    untrained = pra.create_model(config)
    candidates["untrained"] = lambda: [backbone_features(untrained, im, layer)
                                       for im in (train_im, eval_im)]
  result = {"layer": layer if isinstance(layer, int) else list(layer),
            "num_train": len(train_y), "num_eval": len(eval_y)}
  for name, features in candidates.items():
    a, b = features()
    r = linear_probe(a, train_y, b, eval_y, config.data.num_classes, epochs=epochs,
                     seed=config.seed)
    result.update({f"{name}_{m}": v for m, v in r.items()})
  return result
