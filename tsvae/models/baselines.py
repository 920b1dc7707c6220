"""Stage-1 baselines of issue #4: a VAE with an IAF posterior, and deterministic autoencoders.

- ``FlowVAE`` (``stage1.model='vae_flow'``): the reference VAE whose posterior sample
  z_0 = μ + σ·ε is pushed through K inverse autoregressive flow steps (Kingma et al. 2016,
  "Improved Variational Inference with Inverse Autoregressive Flow"). Each step is a MADE
  (Germain et al. 2015) with two masked ELU hidden layers that also reads a context vector h;
  it outputs (m, s) and applies the numerically stable gated update
  σ_k = sigmoid(s + 1), z ← σ_k ⊙ z + (1 − σ_k) ⊙ m, whose log-determinant is Σ log σ_k
  (the Jacobian is triangular with diagonal σ_k). The order of z is reversed between steps.
  h = ELU(Dense([μ, log σ])): a small Dense on the encoder's outputs, so the encoders (and
  their parameters) are those of ``model='vae'``. The +1 on s is IAF's advice to start with
  s "sufficiently positive" (σ_k ≈ 0.73: each step starts close to the identity).
- ``DeterministicAE`` (``'wae_mmd'``, ``'rae'``): z = μ(x), no noise. Its encoder is wrapped in
  ``DeterministicEncoder``, which reports σ = 0 and log σ = ``DETERMINISTIC_LOG_SIGMA`` (a
  finite stand-in for −∞), so latent extraction, reconstruction and diagnostics work
  unchanged. It also draws as many N(0, I) codes as the batch has, for the WAE's MMD.
  Its γ is not part of any objective: it is reported as ½ log of a running MSE of the batches
  (the VAE's ``running_mse`` gamma mode), which is also what ``sampling.pixel_noise`` uses.

Prior samples of all of them are z ~ N(0, I) → decoder, the reference's stage-1 sampling path.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from tsvae.models import layers
from tsvae.models.vae import VAE

Array = jax.Array

# log σ of a deterministic encoder: σ = 0 exactly, and exp(−10⁴) underflows to 0 in float32
# while squares and sums of it stay finite (no −inf or NaN anywhere downstream).
DETERMINISTIC_LOG_SIGMA = -1.0e4
# Added to the IAF gate pre-activation s so that σ_k = sigmoid(s + 1) starts near 0.73.
IAF_GATE_BIAS = 1.0


def made_masks(dim: int, hidden: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """MADE masks for input → hidden, hidden → hidden and hidden → output, each [in, out].

  Input unit i has degree i + 1 (1..dim); hidden unit k has degree (k mod (dim − 1)) + 1. A
  hidden unit sees inputs of degree ≤ its own; output i sees hidden units of degree < i + 1,
  so output i depends on inputs 0..i−1 only (output 0 on the context alone).
  """
  in_deg = np.arange(1, dim + 1)
  hid_deg = np.arange(hidden) % max(1, dim - 1) + 1
  to_hidden = (hid_deg[None, :] >= in_deg[:, None]).astype(np.float32)
  hidden_to_hidden = (hid_deg[None, :] >= hid_deg[:, None]).astype(np.float32)
  to_out = (in_deg[None, :] > hid_deg[:, None]).astype(np.float32)
  return to_hidden, hidden_to_hidden, to_out


class MaskedDense(nn.Module):
  """Dense layer of a MADE over ``dim`` inputs: kernel [in, out] times a fixed 0/1 mask.

  ``kind`` picks the mask of ``made_masks``: 'to_hidden', 'hidden' or 'to_out'. ``dtype``: the
  compute dtype of the product (as ``layers.Dense``; float32 result either way).
  """
  features: int
  dim: int
  kind: str
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    hidden = x.shape[-1] if self.kind == 'to_out' else self.features
    masks = dict(zip(('to_hidden', 'hidden', 'to_out'), made_masks(self.dim, hidden)))
    kernel = self.param('kernel', layers.glorot_uniform, (x.shape[-1], self.features),
                        jnp.float32)
    masked = kernel * jnp.asarray(masks[self.kind])
    if jnp.dtype(self.dtype) == jnp.float32:
      y = x @ masked
    else:
      y = layers.matmul(x.astype(self.dtype), masked.astype(self.dtype))
    if self.use_bias:
      y = y + self.param('bias', layers.zeros_init, (self.features,), jnp.float32)
    return y


class IAFStep(nn.Module):
  """One IAF step: (z, h) → (z', Σ log σ_k); z' = σ_k ⊙ z + (1 − σ_k) ⊙ m."""
  hidden: int
  dtype: Any = jnp.float32  # Compute dtype of the products (layers.py); the gate is float32.

  @nn.compact
  def __call__(self, z: Array, h: Array) -> tuple[Array, Array]:
    dim = z.shape[-1]
    masked = lambda features, kind, name: MaskedDense(features, dim, kind, dtype=self.dtype,
                                                      name=name)
    a = masked(self.hidden, 'to_hidden', 'in')(z)
    a = nn.elu(a + layers.dense(self.hidden, use_bias=False, dtype=self.dtype,
                                name='context')(h))
    a = nn.elu(masked(self.hidden, 'hidden', 'hidden')(a))
    m = masked(dim, 'to_out', 'm')(a)
    s = masked(dim, 'to_out', 's')(a) + IAF_GATE_BIAS
    gate = jax.nn.sigmoid(s)
    z = gate * z + (1.0 - gate) * m
    return z, jnp.sum(jax.nn.log_sigmoid(s), axis=-1)


class IAFFlow(nn.Module):
  """K IAF steps with the order of z reversed between steps.

  ``__call__(z0, context_input)`` returns (z_K, Σ_k Σ_i log σ_k,i) per example: the log |det|
  of ∂z_K/∂z_0 (the reversals are permutations, |det| = 1).
  """
  num_steps: int
  hidden: int
  dtype: Any = jnp.float32  # Compute dtype of the products (layers.py); log_det is float32.

  @nn.compact
  def __call__(self, z: Array, context_input: Array) -> tuple[Array, Array]:
    h = nn.elu(layers.dense(self.hidden, dtype=self.dtype, name='context')(context_input))
    log_det = jnp.zeros(z.shape[:-1], z.dtype)
    for k in range(self.num_steps):
      if k:
        z = z[..., ::-1]
      z, step_log_det = IAFStep(self.hidden, dtype=self.dtype, name=f'step{k}')(z, h)
      log_det = log_det + step_log_det
    return z, log_det


class FlowVAE(VAE):
  """The VAE with an IAF posterior q(z_K|x); see the module docstring.

  ``__call__`` returns the VAE's keys (``z`` is z_K, ``mu``/``sigma``/``log_sigma`` those of
  the Gaussian q(z_0|x)) plus ``eps`` (z_0 = μ + σ·eps) and ``log_det`` (Σ log |det| per
  example), from which ``losses.flow_negative_elbo`` forms the Monte-Carlo KL.
  """
  flow_steps: int = 4
  flow_hidden: int = 512
  flow_dtype: Any = jnp.float32  # Compute dtype of the IAF's products (layers.py).

  def setup(self):
    super().setup()
    self.flow = IAFFlow(self.flow_steps, self.flow_hidden, dtype=self.flow_dtype)

  def _flow(self, mu: Array, sigma: Array, log_sigma: Array, eps: Array):
    return self.flow(mu + sigma * eps, jnp.concatenate([mu, log_sigma], axis=-1))

  def posterior_sample(self, x: Array, eps: Array, train: bool) -> Array:
    mu, sigma, log_sigma = self.encode(x, train)
    return self._flow(mu, sigma, log_sigma, eps)[0]

  def __call__(self, x: Array, train: bool) -> dict[str, Array]:
    mu, sigma, log_sigma = self.encode(x, train)
    eps = jax.random.normal(self.make_rng('noise'), mu.shape, mu.dtype)
    z, log_det = self._flow(mu, sigma, log_sigma, eps)
    x_hat = self.decode(z, train)
    return dict(mu=mu, sigma=sigma, log_sigma=log_sigma, eps=eps, z=z, log_det=log_det,
                x_hat=x_hat, loggamma=self._batch_loggamma(x, x_hat, train))


class DeterministicEncoder(nn.Module):
  """Wraps a stage-1 encoder: (μ, σ, log σ) → (μ, 0, DETERMINISTIC_LOG_SIGMA)."""
  inner: nn.Module

  @property
  def latent_dim(self) -> int:
    return self.inner.latent_dim

  def __call__(self, x: Array, train: bool) -> tuple[Array, Array, Array]:
    mu, _, _ = self.inner(x, train=train)
    return mu, jnp.zeros_like(mu), jnp.full_like(mu, DETERMINISTIC_LOG_SIGMA)


class DeterministicAE(VAE):
  """Deterministic autoencoder (WAE-MMD, RAE): z = μ(x); build it with ``make_stage1_model``.

  ``__call__`` returns the VAE's keys (σ = 0, z = μ) plus ``z_prior``, as many N(0, I) draws
  as the batch has (the WAE's MMD compares the codes with them).
  """

  def __call__(self, x: Array, train: bool) -> dict[str, Array]:
    mu, sigma, log_sigma = self.encode(x, train)
    z_prior = jax.random.normal(self.make_rng('noise'), mu.shape, mu.dtype)
    x_hat = self.decode(mu, train)
    return dict(mu=mu, sigma=sigma, log_sigma=log_sigma, z=mu, z_prior=z_prior, x_hat=x_hat,
                loggamma=self._batch_loggamma(x, x_hat, train))
