"""InfoGAN-SN stage-1 networks (reference ``Infogan.build_encoder1/build_decoder1``).

The "neutral" InfoGAN architecture of Lucic et al. (2018) with spectral normalisation on
every encoder layer. Works for any square size divisible by 4 (the registry declares
28, 32 and 64).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from tsvae.models import layers

Array = jax.Array


class InfoGANEncoder(nn.Module):
  """conv64 4x4 s2 (SN) lReLU -> conv128 4x4 s2 (SN) BN lReLU -> fc1024 (SN) BN lReLU
  -> fc 2*latent (SN); sigma = 1e-6 + softplus(r), log_sigma = log(sigma)."""
  latent_dim: int

  @nn.compact
  def __call__(self, x: Array, train: bool) -> tuple[Array, Array, Array]:
    y = layers.lrelu(layers.SNConv(64, 4, 2, name='conv1')(x, update_stats=train))
    y = layers.SNConv(128, 4, 2, name='conv2')(y, update_stats=train)
    y = layers.lrelu(layers.batch_norm(train, name='bn2')(y))
    y = y.reshape(y.shape[0], -1)
    y = layers.SNDense(1024, name='fc3')(y, update_stats=train)
    y = layers.lrelu(layers.batch_norm(train, name='bn3')(y))
    params = layers.SNDense(2 * self.latent_dim, name='en4')(y, update_stats=train)
    mu = params[:, :self.latent_dim]
    sigma = 1e-6 + jax.nn.softplus(params[:, self.latent_dim:])
    return mu, sigma, jnp.log(sigma)


class InfoGANDecoder(nn.Module):
  """fc1024 BN ReLU -> fc 128*(s/4)^2 BN ReLU -> deconv64 4x4 s2 BN ReLU
  -> deconv C 4x4 s2 -> sigmoid. No spectral norm."""
  image_shape: tuple[int, int, int]
  fast_vjp: bool = True

  @nn.compact
  def __call__(self, z: Array, train: bool) -> Array:
    size, _, channels = self.image_shape
    s4 = size // 4
    dense = lambda f, name: nn.Dense(  # reference `linear`
        f, kernel_init=layers.normal_init_infogan, bias_init=layers.zeros_init, name=name)
    deconv = lambda f, name: layers.ConvTranspose(  # reference `deconv2d`
        f, 4, 2, kernel_init=layers.normal_init_infogan, bias_init=layers.zeros_init,
        fast_vjp=self.fast_vjp, name=name)
    y = nn.relu(layers.batch_norm(train, name='bn1')(dense(1024, 'fc1')(z)))
    y = dense(128 * s4 * s4, 'fc2')(y)
    y = nn.relu(layers.batch_norm(train, name='bn2')(y))
    y = y.reshape(y.shape[0], s4, s4, 128)
    y = nn.relu(layers.batch_norm(train, name='bn3')(deconv(64, 'conv3')(y)))
    return nn.sigmoid(deconv(channels, 'conv4')(y))
