"""The smallest working PRA: for tests and quick checks (seconds on one CPU core).

  python -m pra_jax.main --config=configs/tiny.py --workdir=/tmp/pra_tiny
"""

from configs import common


def get_config():
  c = common.base_config()
  c.data.source = "digits"
  c.data.image_size = 16
  c.data.channels = 1
  c.data.num_classes = 10
  c.data.random_flip = False       # A flipped digit is not a digit.
  c.data.eval_split = "eval"

  c.model.patch_size = 4           # 16 patches of 4x4x1 = 16 pixels.
  b = c.model.backbone
  b.width, b.depth, b.num_heads, b.mlp_ratio = 32, 2, 2, 2.0
  h = c.model.head
  h.width, h.depth, h.num_draws = 32, 2, 2
  s = c.model.state
  s.dim, s.width, s.depth = 4, 32, 1

  t = c.train
  t.batch_size, t.num_steps, t.lr, t.warmup_steps = 8, 4, 1e-3, 2
  t.ema_decay = 0.9
  t.log_every, t.sample_every = 1, 0
  c.checkpoint.every = 2
  c.checkpoint.async_save = False
  sp = c.sample
  sp.num_steps, sp.cfg, sp.batch_size = 4, 2.0, 10
  return c
