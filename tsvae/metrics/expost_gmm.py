"""Ex-post density estimation: a Gaussian mixture fitted to the stage-1 codes.

Ghosh et al. (2020, "From Variational to Deterministic Autoencoders", the RAE paper) sample a
trained autoencoder by fitting a density to the codes of the training set *after* training and
decoding draws from it. Here that density is a K-component Gaussian mixture with full
covariances, fitted by scikit-learn's EM (`sklearn.mixture.GaussianMixture`, k-means
initialisation, fixed `random_state`) on the encoder means μ_z(x) of the training images. It is
the ablation of the Two-Stage VAE's second VAE: the same job (a density of q(z) to sample from),
done by a classical density estimator. It works for any stage-1 model, the deterministic
encoders (WAE-MMD, RAE) included.

Samples: k ~ Categorical(π), z = m_k + L_k ε with L_k L_kᵀ = Σ_k, ε ~ N(0, I), drawn with NumPy
from a seeded generator; images are the stage-1 decoder means of those z.
"""

import dataclasses
from typing import Any, Callable, Dict, Optional

import numpy as np

from tsvae import batching

DEFAULT_COMPONENTS = 10
COVARIANCE_TYPE = 'full'
_SAMPLE_PURPOSE = 5  # Separates the sampling stream from other uses of the same seed.


@dataclasses.dataclass(frozen=True)
class Mixture:
  """A fitted Gaussian mixture (float64 arrays)."""
  weights: np.ndarray  # [K], sums to 1
  means: np.ndarray  # [K, d]
  covariances: np.ndarray  # [K, d, d]
  converged: bool
  num_iterations: int
  mean_log_likelihood: float  # Average log-likelihood per training code under the fit.
  num_codes: int
  seed: int

  @property
  def num_components(self) -> int:
    return len(self.weights)

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  def summary(self) -> Dict[str, Any]:
    """What metrics.json records about the fit."""
    return {'components': self.num_components, 'covariance_type': COVARIANCE_TYPE,
            'seed': self.seed, 'num_codes': self.num_codes, 'converged': self.converged,
            'num_iterations': self.num_iterations,
            'mean_log_likelihood': self.mean_log_likelihood,
            'weights': [float(w) for w in self.weights],
            'fitted_on': 'stage-1 encoder means mu_z of the whole training split',
            'estimator': 'sklearn.mixture.GaussianMixture (EM, k-means init)'}


def fit(codes: np.ndarray, num_components: int = DEFAULT_COMPONENTS, seed: int = 0, *,
        max_iter: int = 200, reg_covar: float = 1e-6) -> Mixture:
  """Fits a full-covariance GMM to codes [N, d] (deterministic for a given seed).

  Raises:
    ValueError: codes not a finite [N, d] array, or fewer codes than components.
  """
  from sklearn import mixture  # pylint: disable=g-import-not-at-top
  codes = np.asarray(codes, np.float64)
  num_components = int(num_components)
  if num_components < 1:
    raise ValueError(f'num_components must be >= 1, got {num_components}.')
  if codes.ndim != 2 or codes.shape[1] < 1:
    raise ValueError(f'codes must be [N, d], got shape {codes.shape}.')
  if len(codes) < max(2, num_components):
    raise ValueError(f'{len(codes)} codes cannot fit a {num_components}-component mixture.')
  if not np.all(np.isfinite(codes)):
    raise ValueError('the codes are not all finite.')
  gmm = mixture.GaussianMixture(n_components=num_components, covariance_type=COVARIANCE_TYPE,
                                max_iter=int(max_iter), reg_covar=float(reg_covar),
                                random_state=int(seed))
  gmm.fit(codes)
  return Mixture(weights=np.asarray(gmm.weights_, np.float64),
                 means=np.asarray(gmm.means_, np.float64),
                 covariances=np.asarray(gmm.covariances_, np.float64),
                 converged=bool(gmm.converged_), num_iterations=int(gmm.n_iter_),
                 mean_log_likelihood=float(gmm.score(codes)), num_codes=len(codes),
                 seed=int(seed))


def sample(gmm: Mixture, num: int, seed: int = 0, return_components: bool = False):
  """`num` codes float32 [num, d] drawn from the mixture (a pure function of the seed)."""
  rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFF_FFFF, _SAMPLE_PURPOSE]))
  weights = gmm.weights / gmm.weights.sum()
  components = rng.choice(gmm.num_components, size=int(num), p=weights)
  chol = np.linalg.cholesky(gmm.covariances)  # [K, d, d]; Σ_k is PD (reg_covar on the diagonal).
  eps = rng.standard_normal((int(num), gmm.dim))
  z = gmm.means[components] + np.einsum('nij,nj->ni', chol[components], eps)
  z = z.astype(np.float32)
  return (z, components) if return_components else z


def generate(decode: Callable[[np.ndarray], np.ndarray], gmm: Mixture, num: int, seed: int, *,
             batch_size: int = 500, pixel_noise_std: Optional[float] = None) -> np.ndarray:
  """`num` images: GMM codes through `decode` (the stage-1 decoder mean), float32.

  With `pixel_noise_std`, x ~ N(mean, std² I) clipped to [0, 1] instead of the mean (the
  `sampling.pixel_noise` option of the other sample sets).
  """
  images = batching.map_padded(decode, sample(gmm, num, seed), int(batch_size))
  if pixel_noise_std is not None:
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFF_FFFF,
                                                        _SAMPLE_PURPOSE + 1]))
    images = np.clip(images + pixel_noise_std * rng.standard_normal(images.shape), 0.0, 1.0)
  return images.astype(np.float32)
