"""The CPU demo: PRA on scikit-learn's real handwritten digits, minutes on a 2-core laptop.

  python -m pra_jax.main --config=configs/demo.py --workdir=/tmp/pra_demo

The final sample grid (one row per digit class) lands in /tmp/pra_demo/samples/.
"""

from configs import common


def get_config():
  c = common.base_config()
  c.data.source = "digits"         # 1500 train / 297 held-out scans, shipped with scikit-learn.
  c.data.image_size = 16           # The 8x8 scans upsampled bilinearly.
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.random_flip = False       # A flipped digit is not a digit.
  c.data.eval_split = "eval"

  c.model.patch_size = 4           # 16 patches of 4x4x1 = 16 pixels.
  b = c.model.backbone
  b.width, b.depth, b.num_heads, b.mlp_ratio = 128, 4, 4, 4.0
  b.scan_layers = False            # At depth 4 an unrolled stack compiles as fast and runs faster.
  h = c.model.head
  h.width, h.depth, h.num_draws = 128, 3, 4
  s = c.model.state
  s.dim, s.width, s.depth = 4, 128, 2   # Z = 4 at P = 16.

  t = c.train
  t.batch_size = 64
  t.num_steps = 1000               # Recognisable digits in every row by ~500 steps.
  t.lr = 1e-3
  t.warmup_steps = 100
  t.weight_decay = 0.0
  t.ema_decay = 0.995
  t.log_every = 50
  t.sample_every = 500             # Grids in workdir/samples/ and TensorBoard (and at the end).
  t.eval_every = 1000              # Digits judge on 500 samples: class accuracy + Frechet distance.
  c.eval.num_images = 500
  c.checkpoint.every = 500
  c.checkpoint.max_to_keep = 2

  sp = c.sample
  sp.num_steps = 20
  sp.solver = "euler"              # The sampler every demo figure in the README was measured with.
  sp.cfg = 2.0
  sp.batch_size = 100
  return c
