"""pytorch-fid's FID Inception state dict (.pth) -> the .npz that inception.load_inception reads
(`python -m pra_jax.tools.convert_inception` is the command). Needs torch for reading the .pth
only; the .npz needs nothing but numpy.
"""

import hashlib

import numpy as np
from absl import logging

from pra_jax.metrics import inception

# torch parameter name -> ours, by last component; conv and fc weights also change layout.
_BN_RENAME = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _convert_one(name: str, arr: np.ndarray) -> tuple[str, np.ndarray]:
  module, leaf = name.rsplit(".", 1)
  if module.endswith(".conv") and leaf == "weight":
    return f"{module}.kernel", arr.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  if module.endswith(".bn") and leaf in _BN_RENAME:
    return f"{module}.{_BN_RENAME[leaf]}", arr
  if module == "fc" and leaf == "weight":
    return "fc.kernel", arr.T  # [K, D] -> [D, K]
  if module == "fc" and leaf == "bias":
    return "fc.bias", arr
  raise ValueError(f"unexpected parameter {name!r} in the Inception state dict")


def convert_state_dict(state_dict) -> dict[str, np.ndarray]:
  """torch state dict (tensors or arrays) of the FID Inception -> {our name: float32 array}.

  Batch-norm step counters and the auxiliary classifier (absent from pytorch-fid's weights,
  present in a plain torchvision Inception3) are dropped; anything else unknown is an error.
  Every array is checked against the shapes InceptionV3 expects.
  """
  out = {}
  for name, value in state_dict.items():
    if name.endswith("num_batches_tracked") or name.startswith("AuxLogits."):
      continue
    arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
    ours, arr = _convert_one(name, arr)
    out[ours] = np.ascontiguousarray(arr, dtype=np.float32)
  expected = inception.weight_shapes()
  missing = sorted(set(expected) - set(out))
  if missing:
    raise ValueError(f"state dict lacks {len(missing)} Inception arrays, e.g. {missing[:3]}")
  for name, arr in out.items():
    if name not in expected:
      raise ValueError(f"state dict entry maps to {name!r}, which InceptionV3 does not have")
    if arr.shape != expected[name]:
      raise ValueError(f"array {name!r} has shape {arr.shape}, expected {expected[name]}")
  return out


def convert_file(pth_path: str, out_path: str) -> str:
  """Converts a .pth state dict to our .npz; returns the .npz's sha256."""
  import torch  # Imported here: only the conversion needs it.

  arrays = convert_state_dict(torch.load(pth_path, map_location="cpu", weights_only=True))
  with open(out_path, "wb") as f:
    np.savez(f, **arrays)
  with open(out_path, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
  logging.info("wrote %d arrays to %s (sha256 %s)", len(arrays), out_path, digest)
  return digest
