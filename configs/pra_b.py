"""PRA-B: 250M parameters, class-conditional ImageNet 256x256 (paper: FID-50K 2.21).

  python -m pra_jax.main --config=configs/pra_b.py --workdir=gs://YOUR_BUCKET/pra_b

Parameters per component, counted without allocating anything:
  python -m pra_jax.tools.params --config=configs/pra_b.py
"""

from configs import common

# -- size preset [ours] --------------------------------------------------------------------------
# The paper gives only the total. Between S and L in both width and depth: a backbone 896 wide
# (14 heads of 64) and 16 deep with a gated MLP; a MAR-style AdaLN MLP head 1024 wide, 7
# residual blocks deep; E and G as in every size (512-wide residual MLPs, Z = 16).
# Whole model: 251,295,008 (encoder 1.46M, decoder 1.46M, backbone 207.28M, head 41.10M).
BACKBONE = dict(width=896, depth=16, num_heads=14, mlp_ratio=4.0)
HEAD = dict(width=1024, depth=7)
STATE = dict(dim=16, width=512, depth=2)


def get_config():
  # Set 'dots_with_no_batch_dims_saveable' if memory runs short.
  return common.imagenet_256(BACKBONE, HEAD, STATE, remat_policy="none")
