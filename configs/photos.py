"""The real-photo proving ground: 32x32 RGB crops of ten bundled photographs, one class each, in
8x8x3 patches of 192 values (16 per image): PRA's high-dimensional-patch regime on a CPU.

  python -m pra_jax.main --config=configs/photos.py --workdir=/tmp/pra_photos
  python -m pra_jax.ablate --config=configs/photos.py --workdir=/tmp/pra_photos_study

The 48-value variant (4x4x3 patches, 64 per image, Z = 8 of 48 values):
  --config.model.patch_size=4 --config.model.state.dim=8
Needs scikit-image installed (its wheel ships 8 of the photos; nothing is downloaded).
"""

from configs import demo


def get_config():
  # The digits demo's backbone, training and sampler recipe; only the data, the patch and the
  # sizes that follow from 192-value patches differ.
  c = demo.get_config()
  c.data.source = "photos"         # 4544 train / 284 held-out crops (bottom fifth of each photo).
  c.data.image_size = 32
  c.data.channels = 3
  c.data.random_flip = True        # A mirrored photo crop is still a crop of that photo.

  c.model.patch_size = 8           # 16 patches of 8x8x3 = 192 values.
  c.model.head.width = 192
  s = c.model.state
  s.dim, s.width = 16, 192         # Z = 16 as in the paper (there for 768 values).

  t = c.train
  t.num_steps = 2000
  t.sample_every = 1000
  t.eval_every = 0                 # Off: the study scores photos (with the judge a periodic eval
                                   # would use, pra_jax.periodic_eval).
  return c
