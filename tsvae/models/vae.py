"""The VAE wrapper used for both stages (reference ``TwoStageVaeModel``).

Holds an encoder, a decoder and the decoder's standard deviation γ (``loggamma_x`` for stage 1,
``loggamma_z`` for stage 2). How γ is obtained is the ``gamma_mode``:

- ``learned`` (reference): one trainable scalar log γ, initialised at 0 (γ = 1).
- ``fixed``: γ = ``gamma_value``, not trained (the classic fixed-variance VAE baseline).
- ``optimal``: the σ-VAE's analytic optimum γ² = MSE of the batch (Rybkin et al. 2021), with
  their optional soft floor log γ ← f + softplus(log γ − f) when ``optimal_gamma_floor`` > −∞.
- ``running_mse``: γ² = a running average of the batch MSE, not differentiated (Asperti &
  Trentin's balancing of the two loss terms).

The last two also keep that running MSE in ``batch_stats/running_mse`` so that γ has a value
outside a batch (for ancestral sampling and reporting).

Whatever the compute dtype of the encoder and decoder (``layers.py``), their outputs are cast
to float32 here: μ, σ, log σ, the decoder mean, log γ, and so the KL, the residual (x − x̂)/γ
and the loss are float32, and γ → 0 stays as well defined as in a float32 model.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

GAMMA_MODES = ('learned', 'fixed', 'optimal', 'running_mse')


def _float32(arrays):
  """``arrays`` (an array or a tuple of them) in float32; a no-op for float32 nets."""
  return jax.tree.map(lambda a: a.astype(jnp.float32), arrays)


class VAE(nn.Module):
  """Encoder q(z|x) = N(mu, sigma^2), decoder mean x_hat(z), decoder std gamma.

  ``__call__`` draws z = mu + sigma * eps with eps from the ``'noise'`` RNG stream.
  In train mode apply with ``mutable=['batch_stats']`` (BN averages, spectral-norm u,
  running MSE).
  """
  encoder: nn.Module
  decoder: nn.Module
  gamma_name: str = 'loggamma'
  # Optional floor on log gamma (off by default, as in the reference: gamma -> 0 is expected).
  loggamma_floor: float = float('-inf')
  gamma_mode: str = 'learned'
  gamma_value: float = 1.0  # 'fixed' mode.
  running_mse_momentum: float = 0.99  # 'optimal' and 'running_mse' modes.
  optimal_gamma_floor: float = float('-inf')  # σ-VAE soft floor on log γ ('optimal').

  def setup(self):
    if self.gamma_mode not in GAMMA_MODES:
      raise ValueError(f'gamma_mode must be one of {GAMMA_MODES}, got {self.gamma_mode!r}')
    # The parameter exists in every mode so that checkpoints share one structure; only
    # 'learned' uses it.
    self._raw_loggamma = self.param(self.gamma_name, nn.initializers.zeros, (), jnp.float32)
    if self.gamma_mode in ('optimal', 'running_mse'):
      self._running_mse = self.variable('batch_stats', 'running_mse',
                                        lambda: jnp.ones((), jnp.float32))

  def _floor(self, loggamma: Array) -> Array:
    return jnp.maximum(loggamma, self.loggamma_floor)

  def encode(self, x: Array, train: bool) -> tuple[Array, Array, Array]:
    """Returns (mu, sigma, log_sigma), each [B, latent_dim], float32."""
    return _float32(self.encoder(x, train=train))

  def posterior_sample(self, x: Array, eps: Array, train: bool) -> Array:
    """A draw of q(z|x) for the noise ``eps`` [B, latent_dim]: here z = μ + σ·eps.

    Subclasses with another posterior override it; call it as ``method='posterior_sample'``
    (a string, so that the override is the one applied).
    """
    mu, sigma, _ = self.encode(x, train)
    return mu + sigma * eps

  def decode(self, z: Array, train: bool) -> Array:
    """Returns the decoder mean (sigmoid images for stage 1, z_hat for stage 2), float32."""
    return _float32(self.decoder(z, train=train))

  def loggamma(self) -> Array:
    """log γ outside a batch: the parameter, the fixed value, or ½ log(running MSE)."""
    if self.gamma_mode == 'learned':
      return self._floor(self._raw_loggamma)
    if self.gamma_mode == 'fixed':
      return self._floor(jnp.asarray(math.log(self.gamma_value), jnp.float32))
    return self._floor(0.5 * jnp.log(self._running_mse.value))

  def _batch_loggamma(self, x: Array, x_hat: Array, train: bool) -> Array:
    if self.gamma_mode in ('learned', 'fixed'):
      return self.loggamma()
    mse = jnp.mean(jnp.square(x - x_hat))
    if train and not self.is_initializing():
      m = self.running_mse_momentum
      self._running_mse.value = m * self._running_mse.value + (1 - m) * jax.lax.stop_gradient(mse)
    if self.gamma_mode == 'running_mse':
      return self._floor(0.5 * jnp.log(jax.lax.stop_gradient(self._running_mse.value)))
    loggamma = 0.5 * jnp.log(mse)  # 'optimal': argmin over γ of the Gaussian NLL.
    if self.optimal_gamma_floor > float('-inf'):
      loggamma = self.optimal_gamma_floor + jax.nn.softplus(loggamma - self.optimal_gamma_floor)
    return self._floor(loggamma)

  def __call__(self, x: Array, train: bool) -> dict[str, Array]:
    mu, sigma, log_sigma = self.encode(x, train)
    eps = jax.random.normal(self.make_rng('noise'), mu.shape, mu.dtype)
    z = mu + sigma * eps
    x_hat = self.decode(z, train)
    return dict(mu=mu, sigma=sigma, log_sigma=log_sigma, z=z, x_hat=x_hat,
                loggamma=self._batch_loggamma(x, x_hat, train))
