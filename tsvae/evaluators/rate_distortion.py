"""Rate and distortion of a stage-1 VAE on the test images (issue #18, claims 3 and 4).

  rate        KL(q(z|x) ‖ N(0, I)) in nats, summed over the latent dims, mean over the images
  distortion  the mean squared error per pixel of the decoder mean at z = μ_z + σ_z·ε (one z per
              image, as the training objective sees it), mean over the images

For `stage1.model='vae_beta'` both are also computed at every β of `eval.beta_values` with the
one trained network (`rd_betas`, `rd_rate_kl`, `rd_distortion_mse`); `rate_kl` and
`distortion_mse` are those at the chosen β (`stage1.beta_cond.beta`). Models whose posterior is
not a diagonal Gaussian (vae_flow) or that have none (wae_mmd, rae) get null with the reason.
The same ε (seeded by eval.seed) serves every β.
"""

import functools
import math
from typing import Any, Iterator, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from tsvae import batching
from tsvae.evaluators import common

GAUSSIAN_POSTERIOR_MODELS = ('vae', 'vae_beta')
_EPS_SEED_OFFSET = 4  # ε of the distortion: numpy seed eval.seed + 4 (latent_sweep uses + 3).


@functools.partial(jax.jit, static_argnames=('model', 'conditioned'))
def _rd_batch(model, variables, x, eps, log_beta, conditioned):
  kwargs = {'log_beta': log_beta} if conditioned else {}
  mu, sigma, log_sigma = model.apply(variables, x, train=False, method='encode', **kwargs)
  kl = 0.5 * jnp.sum(jnp.square(mu) + jnp.square(sigma) - 2.0 * log_sigma - 1.0, axis=-1)
  x_hat = model.apply(variables, mu + sigma * eps, train=False, method='decode', **kwargs)
  mse = jnp.mean(jnp.square(x - x_hat).reshape(x.shape[0], -1), axis=-1)
  return kl, mse


def rate_distortion(model, variables, images: np.ndarray, *, batch_size: int, seed: int,
                    beta: Optional[float] = None) -> Tuple[float, float]:
  """(rate: mean KL in nats, distortion: mean per-pixel MSE) of float `images` in [0, 1].

  `beta`: for a β-conditioned model, the β to run it at (None: its chosen β; must be None for
  the other models). ε is drawn from numpy's generator seeded by `seed`.
  """
  conditioned = beta is not None
  latent_dim = model.encoder.latent_dim
  eps = np.random.default_rng(seed).standard_normal((len(images), latent_dim)).astype(np.float32)
  log_beta = jnp.float32(math.log(beta) if conditioned else 0.0)
  rows = np.arange(len(images))

  def batch(idx):
    return tuple(jax.device_get(_rd_batch(model, variables, images[idx], eps[idx], log_beta,
                                          conditioned)))

  kl, mse = batching.map_padded(batch, rows, batch_size)
  return float(np.mean(kl)), float(np.mean(mse))


def rate_distortion_curve(model, variables, images: np.ndarray, betas: Sequence[float], *,
                          batch_size: int, seed: int):
  """[(β, rate, distortion)] of a β-conditioned model at each β (the same ε for all)."""
  return [(float(b),) + rate_distortion(model, variables, images, batch_size=batch_size,
                                        seed=seed, beta=float(b)) for b in betas]


def rate_distortion_evaluator(inputs: common.EvalInputs) -> Iterator[Tuple[str, Any]]:
  """rate_kl, distortion_mse (and for vae_beta the curve over eval.beta_values)."""
  c = inputs.config
  model = c.stage1.get('model', 'vae')
  keys = ('rate_kl', 'distortion_mse', 'rd_betas', 'rd_rate_kl', 'rd_distortion_mse')
  if model not in GAUSSIAN_POSTERIOR_MODELS:
    reason = (f'stage1.model={model!r} has no diagonal-Gaussian posterior q(z|x): the rate '
              'is the closed-form KL of one')
    for key in keys:
      yield key, common.Unavailable(reason)
    return
  images = inputs.test_uint8.astype(np.float32) / 255.0
  seed = inputs.seed + _EPS_SEED_OFFSET
  rate, distortion = rate_distortion(inputs.model1, inputs.variables1, images,
                                     batch_size=inputs.batch_size, seed=seed)
  yield 'rate_kl', rate
  yield 'distortion_mse', distortion
  if model != 'vae_beta':
    reason = "stage1.model is not 'vae_beta': one beta per run"
    for key in keys[2:]:
      yield key, common.Unavailable(reason)
    return
  curve = rate_distortion_curve(inputs.model1, inputs.variables1, images,
                                c.eval.get('beta_values', (0.1, 0.3, 1.0, 3.0)),
                                batch_size=inputs.batch_size, seed=seed)
  yield 'rd_betas', [b for b, _, _ in curve]
  yield 'rd_rate_kl', [r for _, r, _ in curve]
  yield 'rd_distortion_mse', [d for _, _, d in curve]
