"""The base of every config: each field at its declared default. The fields themselves (default,
allowed values or range, whether a resume may change it, what it means) are declared once, in
pra_jax/config_schema.py; list them with `python -m pra_jax.tools.config_fields`. The files
beside this one override a few values.
"""

import ml_collections

from pra_jax import config_schema


def base_config() -> ml_collections.ConfigDict:
  return config_schema.defaults()


def imagenet_256(backbone: dict, head: dict, state: dict, remat_policy: str):
  """The S/B/L recipe: the defaults above (ImageNet 256 from TFDS as array_record, see the README
  for the one-time build; 16x16x3 patches, 256 tokens of 768 pixels; a scanned layer stack) with
  bf16 compute and float32 parameters; only the size preset and remat differ per size."""
  c = base_config()
  b = c.model.backbone
  b.update(backbone)
  b.remat_policy = remat_policy
  b.dtype = "bfloat16"             # bf16 compute, float32 parameters and optimizer state.
  c.model.head.update(head)
  c.model.head.dtype = "bfloat16"
  c.model.state.update(state)      # E and G stay float32: small, and they set pixel precision.
  return c
