"""The training forward: one parallel pass, returned as named per-example loss terms.

Dimension legend (pra_jax's table): B batch, H/W/C image height/width/channels, N patches,
P pixels per patch, Z state dims, D width.
Numbers in comments follow the method's three parts (README, "The method").
"""

import jax
import jax.numpy as jnp

from pra_jax import rng, rollout
from pra_jax.models import head as head_lib


def drop_labels(labels_B, keys_B, rate: float, null_class: int):
  """Replaces a `rate` fraction of labels by the null class, so the model learns p(x) for CFG."""
  drop = jax.vmap(jax.random.uniform)(keys_B) < rate
  return jnp.where(drop, null_class, labels_B)


def forward_train(model, images_BHWC, labels_B, key, step, config):
  """Returns ({'total', 'head', 'recon'}: float32 [B] each, {'head_per_position': [B, N]}).

  `key`: one key, or a [B] array of per-example keys (pra_jax.rng): every draw of example b
  comes from its own key, so a microbatch given its slice of the keys draws what the whole
  batch would have. `step`: the optimizer's update count (the sigma schedule reads it).
  """
  x_BNP = model.to_patches(images_BHWC)
  b, n, _ = x_BNP.shape
  keys_B3 = rng.split_each(rng.as_example_keys(key, b), 3)
  key_drop_B, key_inputs_B, key_head_B = keys_B3[:, 0], keys_B3[:, 1], keys_B3[:, 2]
  y_B = drop_labels(labels_B, key_drop_B, config.model.label_drop, model.null_class)

  # (1) Reconstruction pass: z = E(x); G(z) is supervised below. The direct-pixel baseline
  #     has no state: its head targets the pixels themselves.
  z_BNZ = model.encode(x_BNP)

  # (2) Parallel rollout approximation: the backbone's inputs, built per position through the
  #     same state -> pixel path as inference (or any other mode of the ablation).
  x_in = rollout.build_inputs(model, x_BNP, z_BNZ, y_B, key_inputs_B, step, config)

  # (3) Generation loss: teacher-forced backbone on x_in; the head learns z_i given h_i, with
  #     the target held fixed so the head loss does not reshape the state space.
  h_BND = model.backbone(x_in, y_B)
  target = jax.lax.stop_gradient(z_BNZ)
  head_BN = head_lib.flow_loss(model.head, target.reshape(b * n, -1),
                               h_BND.reshape(b * n, -1),
                               rng.split_each(key_head_B, n).reshape(b * n)).reshape(b, n)

  if model.direct_pixel:
    recon_B = jnp.zeros((b,), jnp.float32)
  else:
    # The reconstruction term trains E and G only: with a context-aware decoder it reads h_i
    # without gradient, so the backbone is trained by the head loss alone in both settings of
    # model.state.decoder_context ([ours]).
    x_rec = model.decode(z_BNZ, jax.lax.stop_gradient(h_BND))
    recon_B = jnp.mean(jnp.square(x_rec - x_BNP), axis=(1, 2))
  head_B = head_BN.mean(axis=1)
  terms = {"total": head_B + config.loss.recon_weight * recon_B, "head": head_B, "recon": recon_B}
  return terms, {"head_per_position": head_BN}
