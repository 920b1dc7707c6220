"""The VAE wrapper used for both stages (reference ``TwoStageVaeModel``).

Holds an encoder, a decoder and the scalar learned log gamma (``loggamma_x`` for stage 1,
``loggamma_z`` for stage 2; gamma is a standard deviation, initialised to 1).
"""

from __future__ import annotations

import flax.linen as nn
import jax

Array = jax.Array


class VAE(nn.Module):
  """Encoder q(z|x) = N(mu, sigma^2), decoder mean x_hat(z), scalar log gamma.

  ``__call__`` draws z = mu + sigma * eps with eps from the ``'noise'`` RNG stream.
  In train mode apply with ``mutable=['batch_stats']`` (BN averages, spectral-norm u).
  """
  encoder: nn.Module
  decoder: nn.Module
  gamma_name: str = 'loggamma'
  # Optional floor on log gamma (off by default, as in the reference: gamma -> 0 is expected).
  loggamma_floor: float = float('-inf')

  def setup(self):
    raw = self.param(self.gamma_name, nn.initializers.zeros, (), jax.numpy.float32)
    self._loggamma = jax.numpy.maximum(raw, self.loggamma_floor)

  def encode(self, x: Array, train: bool) -> tuple[Array, Array, Array]:
    """Returns (mu, sigma, log_sigma), each [B, latent_dim]."""
    return self.encoder(x, train=train)

  def decode(self, z: Array, train: bool) -> Array:
    """Returns the decoder mean (sigmoid images for stage 1, z_hat for stage 2)."""
    return self.decoder(z, train=train)

  def loggamma(self) -> Array:
    """The scalar learned log gamma (floored at ``loggamma_floor``)."""
    return self._loggamma

  def __call__(self, x: Array, train: bool) -> dict[str, Array]:
    mu, sigma, log_sigma = self.encode(x, train)
    eps = jax.random.normal(self.make_rng('noise'), mu.shape, mu.dtype)
    z = mu + sigma * eps
    x_hat = self.decode(z, train)
    return dict(mu=mu, sigma=sigma, log_sigma=log_sigma, z=z, x_hat=x_hat,
                loggamma=self._loggamma)
