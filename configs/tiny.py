"""The smallest working PRA: for tests and quick checks (seconds on one CPU core).

  python -m pra_jax.main --config=configs/tiny.py --workdir=/tmp/pra_tiny

The demo (digits, 16x16, 4x4 patches) shrunk: only the sizes, the step counts and what tests
need differ from configs/demo.py.
"""

from configs import demo


def get_config():
  c = demo.get_config()
  b = c.model.backbone
  b.width, b.depth, b.num_heads, b.mlp_ratio = 32, 2, 2, 2.0
  b.scan_layers = True             # common.py's scanned stack, as the paper configs run it (the
                                   # layout test_model compares the unrolled one to).
  h = c.model.head
  h.width, h.depth, h.num_draws = 32, 2, 2
  s = c.model.state
  s.width, s.depth = 32, 1

  t = c.train
  t.batch_size, t.num_steps, t.warmup_steps = 8, 4, 2
  t.weight_decay = 0.02            # common.py's decay (the demo turns it off): tiny steps decay.
  t.ema_decay = 0.9                # Few steps: an EMA that moves visibly.
  t.log_every, t.sample_every, t.eval_every = 1, 0, 0   # Grids and evals only where a test asks.
  c.eval.num_images = 1000         # common.py's value, for a test that turns evals on.
  c.checkpoint.every = 2           # Checkpoints inside a 4-step run, for the resume tests.
  c.checkpoint.max_to_keep = 3     # common.py's value (test_resume records it changing 3 -> 5).
  c.checkpoint.async_save = False  # Saves are done when a test looks at the workdir.
  sp = c.sample
  sp.num_steps, sp.batch_size = 4, 10
  return c
