"""The benchmarks' mid-size PRA: ImageNet-shaped tokens (256 patches of 16x16x3) on a backbone
512 wide and 8 deep, small enough to time on a CPU.

  python benchmarks/bench_mfu.py --config=benchmarks/mid.py
"""

from configs import common


def get_config():
  c = common.base_config()
  c.data.source = "tfds"           # Benchmarks feed synthetic batches; only the shapes matter.
  c.data.image_size, c.data.channels, c.data.num_classes = 256, 3, 1000

  c.model.patch_size = 16          # 256 tokens of 768 pixels, as at ImageNet 256.
  b = c.model.backbone
  b.width, b.depth, b.num_heads, b.mlp_ratio = 512, 8, 8, 4.0
  b.scan_layers = True
  b.remat_policy = "none"
  h = c.model.head
  h.width, h.depth, h.num_draws = 512, 3, 4
  s = c.model.state
  s.dim, s.width, s.depth = 16, 512, 2   # E and G as in every size.

  c.train.batch_size = 8           # Per step on one device; --batch overrides.
  c.sample.num_steps = 20
  c.sample.solver = "euler"        # The sampler bench_sampler's recorded lines were measured with.
  c.sample.cfg = 2.0
  return c
