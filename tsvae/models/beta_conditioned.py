"""The β-conditioned stage-1 VAE (``stage1.model='vae_beta'``, issue #18, claim 4).

One VAE stands in for a sweep of β-VAEs (YOTO, Dosovitskiy & Djolonga 2020; Multi-Rate VAE, Bae
et al. 2022): β is an input of the encoder and the decoder, and each training batch draws one
log β uniformly from [log β_min, log β_max] and weights its KL by that β.

**How β enters: FiLM after the last BatchNorm of each net.** InfoGAN's nets are the reference's
(same layers, same names) plus one FiLM layer: the encoder's 1024-unit fc3 and the decoder's
64-channel conv3 are, after their BatchNorm, modulated as y ← y·(1 + s(log β)) + t(log β), where
(s, t) = Dense(ReLU(Dense(log β))) (64 hidden units; the output Dense starts at zero, so an
untrained conditioned net computes the unconditioned one). Why there and not earlier, and why not
by concatenation: β is constant within a batch, so anything it adds *before* a BatchNorm is a
per-batch shift that the batch statistics remove in training (concatenating log β to z before the
decoder's fc1 + BN would be a no-op there), and a β-dependent activation feeding a BatchNorm would
make its running averages a mixture over β that matches no single β at inference. After the last
BatchNorm nothing is normalised any more, so training (batch statistics) and inference (running
averages) see the same β-dependence: every BatchNorm input is independent of β.

γ: the decoder variance is the VAE's (``gamma_mode``). ``optimal`` (γ² = the batch MSE) is exactly
per β, because a batch has one β; ``learned`` and ``running_mse`` share one γ across all β.

Whenever no log β is passed (latent extraction, stage 2, every sample set, the evaluation),
encoder and decoder run at the *chosen* β of ``stage1.beta_cond.beta`` (their ``log_beta``
field), so the whole pipeline works unchanged at that β; ``log_beta=`` (a scalar or one per
example) evaluates the same network at any other β.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from tsvae.models import layers
from tsvae.models.vae import VAE

Array = jax.Array

FILM_HIDDEN = 64  # Units of the hidden layer that embeds log β in each FiLM layer.


class FiLM(nn.Module):
  """y·(1 + s) + t with (s, t) = Dense(2·C, zero init)(ReLU(Dense(FILM_HIDDEN)(log β))).

  ``log_beta``: a scalar (one β for the batch) or [B] (one per example); y: [B, ..., C].
  """
  features: int
  dtype: Any = jnp.float32  # Compute dtype of the two products (layers.py); FiLM is float32.

  @nn.compact
  def __call__(self, y: Array, log_beta: Array) -> Array:
    lb = jnp.reshape(jnp.asarray(log_beta, jnp.float32), (-1, 1))
    h = nn.relu(layers.Dense(FILM_HIDDEN, dtype=self.dtype, name='embed')(lb))
    st = layers.Dense(2 * self.features, kernel_init=nn.initializers.zeros,
                      dtype=self.dtype, name='film')(h)
    shape = (st.shape[0],) + (1,) * (y.ndim - 2) + (self.features,)
    scale = st[:, :self.features].reshape(shape)
    shift = st[:, self.features:].reshape(shape)
    return y * (1.0 + scale) + shift


def _log_beta(default: float, log_beta: Optional[Array]) -> Array:
  return jnp.asarray(default if log_beta is None else log_beta, jnp.float32)


class BetaInfoGANEncoder(nn.Module):
  """``InfoGANEncoder`` (same layers and names) with FiLM(log β) after bn3 (``film3``)."""
  latent_dim: int
  log_beta: float = 0.0  # The chosen β's log: used when no log_beta is passed.
  fast_sn: bool = True
  bn_zero_debias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, train: bool, log_beta: Optional[Array] = None):
    lb = _log_beta(self.log_beta, log_beta)
    sn_conv = lambda f, name: layers.SNConv(f, 4, 2, fast=self.fast_sn, dtype=self.dtype,
                                            name=name)
    sn_dense = lambda f, name: layers.SNDense(f, fast=self.fast_sn, dtype=self.dtype, name=name)
    bn = lambda name: layers.batch_norm(train, zero_debias=self.bn_zero_debias, name=name)
    y = layers.lrelu(sn_conv(64, 'conv1')(x, update_stats=train))
    y = sn_conv(128, 'conv2')(y, update_stats=train)
    y = layers.lrelu(bn('bn2')(y))
    y = y.reshape(y.shape[0], -1)
    y = sn_dense(1024, 'fc3')(y, update_stats=train)
    y = layers.lrelu(FiLM(1024, dtype=self.dtype, name='film3')(bn('bn3')(y), lb))
    params = sn_dense(2 * self.latent_dim, 'en4')(y, update_stats=train)
    mu = params[:, :self.latent_dim]
    sigma = 1e-6 + jax.nn.softplus(params[:, self.latent_dim:])
    return mu, sigma, jnp.log(sigma)


class BetaInfoGANDecoder(nn.Module):
  """``InfoGANDecoder`` (same layers and names) with FiLM(log β) after bn3 (``film3``)."""
  image_shape: tuple[int, int, int]
  log_beta: float = 0.0  # The chosen β's log: used when no log_beta is passed.
  fast_vjp: bool = True
  bn_zero_debias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: Array, train: bool, log_beta: Optional[Array] = None) -> Array:
    lb = _log_beta(self.log_beta, log_beta)
    size, _, channels = self.image_shape
    s4 = size // 4
    dense = lambda f, name: layers.Dense(
        f, kernel_init=layers.normal_init_infogan, bias_init=layers.zeros_init,
        dtype=self.dtype, name=name)
    deconv = lambda f, name: layers.ConvTranspose(
        f, 4, 2, kernel_init=layers.normal_init_infogan, bias_init=layers.zeros_init,
        fast_vjp=self.fast_vjp, dtype=self.dtype, name=name)
    bn = lambda name: layers.batch_norm(train, zero_debias=self.bn_zero_debias, name=name)
    y = nn.relu(bn('bn1')(dense(1024, 'fc1')(z)))
    y = nn.relu(bn('bn2')(dense(128 * s4 * s4, 'fc2')(y)))
    y = y.reshape(y.shape[0], s4, s4, 128)
    y = bn('bn3')(deconv(64, 'conv3')(y))
    y = nn.relu(FiLM(64, dtype=self.dtype, name='film3')(y, lb))
    return nn.sigmoid(deconv(channels, 'conv4')(y))


class BetaConditionedVAE(VAE):
  """The VAE whose encoder and decoder take log β (see the module docstring).

  ``__call__`` in training draws one log β ~ U[log_beta_min, log_beta_max] per batch from the
  ``'noise'`` stream (unless ``log_beta`` is given) and returns it as ``log_beta`` beside the
  VAE's keys; ``losses.beta_conditioned_negative_elbo`` weights the KL by exp(log_beta). At
  inference the encoder's and decoder's own ``log_beta`` (the chosen β) is the default.
  """
  log_beta_min: float = math.log(0.1)
  log_beta_max: float = math.log(3.0)

  def encode(self, x: Array, train: bool, log_beta: Optional[Array] = None):
    return jax.tree.map(lambda a: a.astype(jnp.float32),
                        self.encoder(x, train=train, log_beta=log_beta))

  def decode(self, z: Array, train: bool, log_beta: Optional[Array] = None) -> Array:
    return self.decoder(z, train=train, log_beta=log_beta).astype(jnp.float32)

  def posterior_sample(self, x: Array, eps: Array, train: bool,
                       log_beta: Optional[Array] = None) -> Array:
    mu, sigma, _ = self.encode(x, train, log_beta)
    return mu + sigma * eps

  def chosen_log_beta(self) -> Array:
    return jnp.asarray(self.encoder.log_beta, jnp.float32)

  def __call__(self, x: Array, train: bool, log_beta: Optional[Array] = None):
    if log_beta is None:
      if train and not self.is_initializing():
        log_beta = jax.random.uniform(self.make_rng('noise'), (), jnp.float32,
                                      self.log_beta_min, self.log_beta_max)
      else:
        log_beta = self.chosen_log_beta()
    log_beta = jnp.asarray(log_beta, jnp.float32)
    mu, sigma, log_sigma = self.encode(x, train, log_beta)
    eps = jax.random.normal(self.make_rng('noise'), mu.shape, mu.dtype)
    z = mu + sigma * eps
    x_hat = self.decode(z, train, log_beta)
    return dict(mu=mu, sigma=sigma, log_sigma=log_sigma, z=z, x_hat=x_hat, log_beta=log_beta,
                loggamma=self._batch_loggamma(x, x_hat, train))
