"""The real-photo proving ground: 32x32 RGB crops of ten bundled photographs, one class each, in
8x8x3 patches of 192 values (16 per image): PRA's high-dimensional-patch regime on a CPU.

  python -m pra_jax.main --config=configs/photos.py --workdir=/tmp/pra_photos
  python -m pra_jax.ablate --config=configs/photos.py --workdir=/tmp/pra_photos_study

The 48-value variant (4x4x3 patches, 64 per image, Z = 8 of 48 values):
  --config.model.patch_size=4 --config.model.state.dim=8
Needs scikit-image installed (its wheel ships 8 of the photos; nothing is downloaded).
"""

from configs import common


def get_config():
  c = common.base_config()
  c.data.source = "photos"         # 4544 train / 284 held-out crops (bottom fifth of each photo).
  c.data.image_size = 32
  c.data.channels = 3
  c.data.num_classes = 10
  c.data.random_flip = True        # A mirrored photo crop is still a crop of that photo.
  c.data.eval_split = "eval"

  c.model.patch_size = 8           # 16 patches of 8x8x3 = 192 values.
  b = c.model.backbone
  b.width, b.depth, b.num_heads, b.mlp_ratio = 128, 4, 4, 4.0
  b.scan_layers = False            # At depth 4 an unrolled stack compiles as fast and runs faster.
  h = c.model.head
  h.width, h.depth, h.num_draws = 192, 3, 4
  s = c.model.state
  s.dim, s.width, s.depth = 16, 192, 2   # Z = 16 as in the paper (there for 768 values).

  t = c.train
  t.batch_size = 64
  t.num_steps = 2000
  t.lr = 1e-3
  t.warmup_steps = 100
  t.weight_decay = 0.0
  t.ema_decay = 0.995
  t.log_every = 50
  t.sample_every = 1000
  t.eval_every = 0
  c.eval.num_images = 500
  c.checkpoint.every = 500
  c.checkpoint.max_to_keep = 2

  sp = c.sample
  sp.num_steps = 20
  sp.cfg = 2.0
  sp.batch_size = 100
  return c
