"""PRA-L: 511M parameters, class-conditional ImageNet 256x256 (paper: FID-50K 1.94).

  python -m pra_jax.main --config=configs/pra_l.py --workdir=gs://YOUR_BUCKET/pra_l

Parameters per component, counted without allocating anything:
  python -m pra_jax.tools.params --config=configs/pra_l.py
"""

from configs import common

# -- size preset [ours] --------------------------------------------------------------------------
# The paper gives only the total. ViT-L-like backbone (1024 wide, 24 deep, 16 heads of 64) with
# a gated MLP; a MAR-style AdaLN MLP head 1536 wide, 8 residual blocks deep (the head grows with
# the model, as MAR's does); E and G as in every size (512-wide residual MLPs, Z = 16).
# Whole model: 511,213,344 (encoder 1.46M, decoder 1.46M, backbone 404.77M, head 103.54M).
BACKBONE = dict(width=1024, depth=24, num_heads=16, mlp_ratio=4.0)
HEAD = dict(width=1536, depth=8)
STATE = dict(dim=16, width=512, depth=2)


def get_config():
  # Keep the outputs of the weight matmuls, recompute the cheap elementwise work and attention
  # in the backward pass: most of 'full' remat's memory saving at a fraction of its extra FLOPs.
  return common.imagenet_256(BACKBONE, HEAD, STATE, remat_policy="dots_with_no_batch_dims_saveable")
