"""Frechet distance and the statistics it is computed from, in float64 on the host."""

import numpy as np
import scipy.linalg


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (float64) of features [n, d]."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise ValueError(f"features must be [n >= 2, d], got shape {f.shape}")
  return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 sqrt(S1 S2)), all in float64."""
  mu1, mu2 = np.atleast_1d(np.float64(mu1)), np.atleast_1d(np.float64(mu2))
  sigma1, sigma2 = np.atleast_2d(np.float64(sigma1)), np.atleast_2d(np.float64(sigma2))
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"statistics disagree in shape: mu {mu1.shape} vs {mu2.shape}, "
                     f"sigma {sigma1.shape} vs {sigma2.shape}")
  diff = mu1 - mu2
  covmean, _ = scipy.linalg.sqrtm(sigma1.dot(sigma2), disp=False)
  if not np.isfinite(covmean).all():
    # A singular product (few samples, dead features): regularise the diagonal.
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = scipy.linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))
