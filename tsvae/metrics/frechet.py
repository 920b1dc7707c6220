"""Gaussian feature statistics and the Fréchet distance between two Gaussians.

    d²((μ1, Σ1), (μ2, Σ2)) = ‖μ1 − μ2‖² + tr Σ1 + tr Σ2 − 2 tr (Σ1^½ Σ2 Σ1^½)^½

(tr (Σ1 Σ2)^½ = tr (Σ1^½ Σ2 Σ1^½)^½: the two matrices are similar.) FID and the proxy
classifier distance are this distance between the statistics of two feature sets.

The trace term is computed in float64 from two symmetric eigendecompositions: Σ1^½ from the
eigenpairs of Σ1 (negative rounding-error eigenvalues clipped to 0), then the eigenvalues of
the symmetric PSD matrix Σ1^½ Σ2 Σ1^½, clipped at 0, square-rooted and summed. Everything stays
real and symmetric, so there is no imaginary part to discard and no need for the ε·I offset
pytorch-fid falls back to when `scipy.linalg.sqrtm(Σ1 Σ2)` of a near-singular product is not
finite. `frechet_distance_scipy` is that pytorch-fid computation, kept for comparison.
"""

from typing import NamedTuple

import numpy as np


class GaussianStats(NamedTuple):
  mu: np.ndarray  # [d] float64
  sigma: np.ndarray  # [d, d] float64, unbiased (N − 1) sample covariance, as np.cov
  num: int


def gaussian_stats(features: np.ndarray) -> GaussianStats:
  """Mean and unbiased covariance (float64) of features [N, d], N >= 2."""
  x = np.asarray(features, np.float64)
  if x.ndim != 2 or len(x) < 2:
    raise ValueError(f'need features [N >= 2, d], got shape {x.shape}.')
  mu = x.mean(axis=0)
  centered = x - mu
  sigma = centered.T @ centered / (len(x) - 1)
  return GaussianStats(mu, (sigma + sigma.T) / 2, len(x))


def _check(mu1, sigma1, mu2, sigma2):
  mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
  sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  d = mu1.shape[0]
  if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(f'inconsistent shapes: mu {mu1.shape} / {mu2.shape}, sigma '
                     f'{sigma1.shape} / {sigma2.shape}.')
  for name, a in (('mu1', mu1), ('mu2', mu2), ('sigma1', sigma1), ('sigma2', sigma2)):
    if not np.all(np.isfinite(a)):
      raise ValueError(f'{name} is not finite.')
  return mu1, (sigma1 + sigma1.T) / 2, mu2, (sigma2 + sigma2.T) / 2


def psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """The symmetric PSD square root of a symmetric matrix (negative eigenvalues → 0)."""
  w, v = np.linalg.eigh(np.asarray(sigma, np.float64))
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """tr (Σ1 Σ2)^½ for PSD Σ1, Σ2, as tr (Σ1^½ Σ2 Σ1^½)^½ in float64."""
  root1 = psd_sqrt(sigma1)
  m = root1 @ np.asarray(sigma2, np.float64) @ root1
  w = np.linalg.eigvalsh((m + m.T) / 2)
  return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """The squared Fréchet (2-Wasserstein) distance between N(μ1, Σ1) and N(μ2, Σ2)."""
  mu1, sigma1, mu2, sigma2 = _check(mu1, sigma1, mu2, sigma2)
  diff = mu1 - mu2
  value = (diff @ diff + np.trace(sigma1) + np.trace(sigma2)
           - 2.0 * trace_sqrt_product(sigma1, sigma2))
  return float(max(value, 0.0))  # ≥ 0 mathematically; clip a rounding-error negative.


def frechet_distance_from_stats(a: GaussianStats, b: GaussianStats) -> float:
  return frechet_distance(a.mu, a.sigma, b.mu, b.sigma)


def frechet_distance_scipy(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """pytorch-fid's computation: scipy.linalg.sqrtm(Σ1 Σ2), εI offset if not finite."""
  from scipy import linalg  # pylint: disable=g-import-not-at-top
  mu1, sigma1, mu2, sigma2 = _check(mu1, sigma1, mu2, sigma2)
  diff = mu1 - mu2
  with np.errstate(all='ignore'):
    covmean = linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f'imaginary component {np.max(np.abs(covmean.imag))}')
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))
