"""pra_jax: Parallel Rollout Approximation for pixel-space autoregressive image generation.

Dimension legend, the one table of shape letters for the whole project: an array's name may end
in its axes (x_BNP is [B, N, P]), each module's "Dimension legend:" line names the letters it
uses, and a letter means only what it means here. E, G and H in prose (G(E(x)), z ~ H(. | h))
are the state encoder, the pixel decoder and the flow head, not axes.

  B        batch: the examples of one batch (images, labels, keys, feature rows)
  X        the examples of a set other than one batch: a dataset split, a sampling job, the rows
           one process holds and stores
  N        patches per image, row-major: (H / p) * (W / p) for patch side p
  I        the backbone's pixel inputs per image: patches 0..N-2 (N - 1 in training)
  M        flattened positions: the rows of a per-patch network (flow head, state encoder,
           pixel decoder), whatever leading axes (batch, patches) were merged into them
  R        guided rows [conditional; unconditional]: 2B, or B when guidance is off (cfg = 1)
  T        noise draws per position (model.head.num_draws): the flow loss's (t, eps) pairs
  J        microbatches of one step (train.grad_accum_steps)
  H, W, C  image height, width, channels
  P        pixels per patch: p * p * C
  Z        state dims, what the head generates per patch: model.state.dim, or P for the
           direct-pixel baseline (whose generated "state" is the patch itself)
  D        width: the features of one row (the backbone's width, a feature extractor's output)
  F        an MLP's hidden width (the backbone MLP's mlp_ratio * D; the flow head's and the
           state networks' width)
  L        tokens of a sequence: class tokens, then pixel inputs
  S        positions of the KV cache: class tokens + N - 1
  A, K     attention heads, and the width of one head (D / A)
  Y        classes: a classifier's logits
  U, V     the two blocks of rows of a pairwise distance (metrics/fid.py)
  a digit  a literal size: keys_B2 (two keys per example), x_BHW1 (one channel)
"""

import os

# Before anything imports TensorFlow (CLU's writers, TFDS): its C++ banners say nothing about
# a pra_jax run. TensorFlow only writes summaries and reads datasets here, so its oneDNN
# kernels (whose banner no log level hides) buy nothing. Explicit settings are kept.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

__version__ = "0.1.0"
