"""PRA-S: 135M parameters, class-conditional ImageNet 256x256 (paper: FID-50K 2.58).

  python -m pra_jax.main --config=configs/pra_s.py --workdir=gs://YOUR_BUCKET/pra_s

Parameters per component, counted without allocating anything:
  python -m pra_jax.tools.params --config=configs/pra_s.py
"""

from configs import common

# -- size preset [ours] --------------------------------------------------------------------------
# The paper gives only the total. ViT-B-like backbone (768 wide, 12 deep, 64-dim heads) with a
# gated MLP; a MAR-style AdaLN MLP head, as wide as the backbone, 5 residual blocks deep; E and G
# as in every size (512-wide residual MLPs, Z = 16). Widths are multiples of 128 for the MXU.
# Whole model: 134,981,152 (encoder 1.46M, decoder 1.46M, backbone 114.72M, head 17.35M).
BACKBONE = dict(width=768, depth=12, num_heads=12, mlp_ratio=4.0)
HEAD = dict(width=768, depth=5)
STATE = dict(dim=16, width=512, depth=2)


def get_config():
  # S fits its activations; recomputing would only cost time.
  return common.imagenet_256(BACKBONE, HEAD, STATE, remat_policy="none")
