"""The Two-Stage VAE objectives as pure functions.

Every function reduces with a *sum* over the batch and data dimensions divided by the batch size B,
as the authors' code does (``reference-semantics.md``, "Stage 1 objective"). γ is a standard
deviation: the residual is divided by γ = exp(log γ) and log γ is added once per data dimension.
Nothing is clamped; log γ → −∞ (and a negative loss) late in training is the expected behaviour of a
VAE whose data lie on a low-dimensional manifold.
"""

import math
from typing import Mapping

import jax.numpy as jnp

HALF_LOG_TWO_PI = 0.5 * math.log(2.0 * math.pi)
# The reference clips the decoder mean with max(x̂, 1e-8) inside the cross-entropy logs.
CROSS_ENTROPY_EPS = 1e-8

RECONSTRUCTION_LOSSES = ('gaussian', 'cross_entropy')


def _batch_size(x: jnp.ndarray) -> float:
  return float(x.shape[0])


def gaussian_kl(mu: jnp.ndarray, sigma: jnp.ndarray,
                log_sigma: jnp.ndarray) -> jnp.ndarray:
  """KL(N(μ, σ²) ‖ N(0, I)) summed over dims, averaged over the batch.

  ``log_sigma`` is passed separately (not recomputed from σ) because each encoder has its own
  parameterisation (softplus for InfoGAN, exp for the others) and the reference uses its own
  log σ in the −2 log σ term.
  """
  terms = jnp.square(mu) + jnp.square(sigma) - 2.0 * log_sigma - 1.0
  return jnp.sum(terms) / 2.0 / _batch_size(mu)


def gaussian_nll(x: jnp.ndarray, x_hat: jnp.ndarray,
                 loggamma: jnp.ndarray) -> jnp.ndarray:
  """−log N(x; x̂, γ² I) summed over data dims, averaged over the batch (γ = exp(log γ), a std)."""
  gamma = jnp.exp(loggamma)
  terms = jnp.square((x - x_hat) / gamma) / 2.0 + loggamma + HALF_LOG_TWO_PI
  return jnp.sum(terms) / _batch_size(x)


def cross_entropy_nll(x: jnp.ndarray, x_hat: jnp.ndarray) -> jnp.ndarray:
  """The reference's cross-entropy baseline on the sigmoid decoder mean x̂ ∈ (0, 1)."""
  log_p = jnp.log(jnp.maximum(x_hat, CROSS_ENTROPY_EPS))
  log_1mp = jnp.log(jnp.maximum(1.0 - x_hat, CROSS_ENTROPY_EPS))
  return -jnp.sum(x * log_p + (1.0 - x) * log_1mp) / _batch_size(x)


def negative_elbo(x: jnp.ndarray,
                  outputs: Mapping[str, jnp.ndarray],
                  *,
                  reconstruction_loss: str = 'gaussian',
                  beta: float = 1.0):
  """loss = β·KL + Gen for one batch; returns (loss, metrics).

  Args:
    x: the data the VAE reconstructs (images for stage 1, latent codes z for stage 2).
    outputs: the VAE's forward outputs, with keys ``mu, sigma, log_sigma, x_hat, loggamma``.
    reconstruction_loss: 'gaussian' (reference) or 'cross_entropy' (baseline; γ unused).
    beta: weight of the KL term; 1 is the ELBO (reference).
  """
  kl = gaussian_kl(outputs['mu'], outputs['sigma'], outputs['log_sigma'])
  if reconstruction_loss == 'gaussian':
    gen = gaussian_nll(x, outputs['x_hat'], outputs['loggamma'])
  elif reconstruction_loss == 'cross_entropy':
    gen = cross_entropy_nll(x, outputs['x_hat'])
  else:
    raise ValueError(f'Unknown reconstruction_loss {reconstruction_loss!r}; '
                     f'expected one of {RECONSTRUCTION_LOSSES}.')
  loss = beta * kl + gen
  mse = jnp.mean(jnp.square(x - outputs['x_hat']))
  metrics = {
      'loss': loss,
      'kl': kl,
      'gen': gen,
      'loggamma': outputs['loggamma'],
      'mse': mse,
  }
  return loss, metrics
