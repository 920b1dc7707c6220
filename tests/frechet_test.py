"""The Fréchet distance and Gaussian statistics (tsvae.metrics.frechet)."""

import numpy as np
import pytest

from tsvae.metrics import frechet


def _closed_form(mu1, a, mu2, b):
  """d² for covariances that share eigenvectors, with eigenvalues a and b."""
  return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))


def test_frechet_distance_closed_forms():
  rng = np.random.default_rng(0)
  d = 16
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
  want = _closed_form(mu1, a, mu2, b)
  assert frechet.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(want,
                                                                                      rel=1e-10)
  q, _ = np.linalg.qr(rng.normal(size=(d, d)))  # Commuting, non-diagonal covariances.
  s1, s2 = (q * a) @ q.T, (q * b) @ q.T
  assert frechet.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9)
  assert frechet.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
  # Rank-deficient covariances (zero eigenvalues) are fine.
  a0 = np.where(np.arange(d) < 4, 0.0, a)
  assert frechet.frechet_distance(mu1, np.diag(a0), mu2, np.diag(b)) == pytest.approx(
      _closed_form(mu1, a0, mu2, b), rel=1e-9)
  # Same covariance: only the means differ.
  assert frechet.frechet_distance(mu1, s1, mu2, s1) == pytest.approx(
      float(np.sum((mu1 - mu2) ** 2)), rel=1e-8)


def test_frechet_distance_general_case_matches_scipy_and_is_symmetric():
  rng = np.random.default_rng(1)
  d = 40
  x, y = rng.normal(size=(d, d)), rng.normal(size=(d, d))
  s1, s2 = x @ x.T / d, y @ y.T / d  # Non-commuting.
  mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
  ours = frechet.frechet_distance(mu1, s1, mu2, s2)
  assert ours == pytest.approx(frechet.frechet_distance_scipy(mu1, s1, mu2, s2), rel=1e-8)
  assert ours == pytest.approx(frechet.frechet_distance(mu2, s2, mu1, s1), rel=1e-8)
  # 1-D: (μ1 − μ2)² + (σ1 − σ2)².
  assert frechet.frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)


def test_stats_from_samples_converge():
  rng = np.random.default_rng(2)
  d = 6
  mu = rng.normal(size=d)
  a = rng.normal(size=(d, d))
  sigma = a @ a.T / d + 0.1 * np.eye(d)
  samples = rng.multivariate_normal(mu, sigma, size=200_000)
  stats = frechet.gaussian_stats(samples)
  np.testing.assert_allclose(stats.mu, mu, atol=0.02)
  np.testing.assert_allclose(stats.sigma, sigma, atol=0.03)
  np.testing.assert_allclose(stats.sigma, np.cov(samples, rowvar=False), rtol=1e-10)
  other = frechet.gaussian_stats(rng.multivariate_normal(mu, sigma, size=200_000))
  assert frechet.frechet_distance_from_stats(stats, other) < 1e-3
  shifted = frechet.gaussian_stats(rng.multivariate_normal(mu + 1.0, sigma, size=200_000))
  assert frechet.frechet_distance_from_stats(stats, shifted) == pytest.approx(d, rel=0.02)
