"""InfoGAN-SN stage-1 networks (reference ``Infogan.build_encoder1/build_decoder1``).

The "neutral" InfoGAN architecture of Lucic et al. (2018) with spectral normalisation on
every encoder layer. Works for any square size divisible by 4 (the registry declares
28, 32 and 64).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from tsvae.models import layers

Array = jax.Array


class InfoGANEncoder(nn.Module):
  """conv64 4x4 s2 (SN) lReLU -> conv128 4x4 s2 (SN) BN lReLU -> fc1024 (SN) BN lReLU
  -> fc 2*latent (SN); sigma = 1e-6 + softplus(r), log_sigma = log(sigma).

  ``fast_sn`` (default) uses the spectral-norm fast path of ``SNConv`` / ``SNDense``;
  ``fast_sn=False`` the plain reference formulation (same function to float rounding).
  """
  latent_dim: int
  fast_sn: bool = True
  bn_zero_debias: bool = False  # BN moving averages as TF1's zero_debias (layers.batch_norm).
  dtype: Any = jnp.float32  # Compute dtype of the matmuls and convolutions (layers.py).

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array, Array]:
    sn_conv = lambda f, name: layers.SNConv(f, 4, 2, fast=self.fast_sn, dtype=self.dtype,
                                            name=name)
    sn_dense = lambda f, name: layers.SNDense(f, fast=self.fast_sn, dtype=self.dtype, name=name)
    y = layers.lrelu(sn_conv(64, 'conv1')(x, update_stats=train))
    y = sn_conv(128, 'conv2')(y, update_stats=train)
    y = layers.lrelu(layers.batch_norm(train, zero_debias=self.bn_zero_debias, name='bn2')(y))
    y = y.reshape(y.shape[0], -1)
    y = sn_dense(1024, 'fc3')(y, update_stats=train)
    y = layers.lrelu(layers.batch_norm(train, zero_debias=self.bn_zero_debias, name='bn3')(y))
    params = sn_dense(2 * self.latent_dim, 'en4')(y, update_stats=train)
    mu = params[:, :self.latent_dim]
    sigma = 1e-6 + jax.nn.softplus(params[:, self.latent_dim:])
    return mu, sigma, jnp.log(sigma)


class InfoGANDecoder(nn.Module):
  """fc1024 BN ReLU -> fc 128*(s/4)^2 BN ReLU -> deconv64 4x4 s2 BN ReLU
  -> deconv C 4x4 s2 -> sigmoid. No spectral norm."""
  image_shape: tuple[int, int, int]
  fast_vjp: bool = True
  bn_zero_debias: bool = False  # BN moving averages as TF1's zero_debias (layers.batch_norm).
  dtype: Any = jnp.float32  # Compute dtype of the matmuls and convolutions (layers.py).

  @nn.compact
  def __call__(self, z: Array, train: bool) -> Array:
    size, _, channels = self.image_shape
    s4 = size // 4
    dense = lambda f, name: layers.Dense(  # reference `linear`
        f, kernel_init=layers.normal_init_infogan, bias_init=layers.zeros_init,
        dtype=self.dtype, name=name)
    deconv = lambda f, name: layers.ConvTranspose(  # reference `deconv2d`
        f, 4, 2, kernel_init=layers.normal_init_infogan, bias_init=layers.zeros_init,
        fast_vjp=self.fast_vjp, dtype=self.dtype, name=name)
    y = nn.relu(layers.batch_norm(train, zero_debias=self.bn_zero_debias, name='bn1')(dense(1024, 'fc1')(z)))
    y = dense(128 * s4 * s4, 'fc2')(y)
    y = nn.relu(layers.batch_norm(train, zero_debias=self.bn_zero_debias, name='bn2')(y))
    y = y.reshape(y.shape[0], s4, s4, 128)
    y = nn.relu(layers.batch_norm(train, zero_debias=self.bn_zero_debias, name='bn3')(deconv(64, 'conv3')(y)))
    return nn.sigmoid(deconv(channels, 'conv4')(y))
