"""The Two-Stage VAE objectives as pure functions.

Every function reduces with a *sum* over the batch and data dimensions divided by the batch size B,
as the authors' code does (``reference-semantics.md``, "Stage 1 objective"). γ is a standard
deviation: the residual is divided by γ = exp(log γ) and log γ is added once per data dimension.
Nothing is clamped; log γ → −∞ (and a negative loss) late in training is the expected behaviour of a
VAE whose data lie on a low-dimensional manifold.
"""

import math
from typing import Any, Callable, Mapping

import jax
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


def _reconstruction_nll(x, outputs, reconstruction_loss: str) -> jnp.ndarray:
  if reconstruction_loss == 'gaussian':
    return gaussian_nll(x, outputs['x_hat'], outputs['loggamma'])
  if reconstruction_loss == 'cross_entropy':
    return cross_entropy_nll(x, outputs['x_hat'])
  raise ValueError(f'Unknown reconstruction_loss {reconstruction_loss!r}; '
                   f'expected one of {RECONSTRUCTION_LOSSES}.')


def _loss_and_metrics(x: jnp.ndarray, outputs: Mapping[str, jnp.ndarray], *, loss: jnp.ndarray,
                      kl: jnp.ndarray, gen: jnp.ndarray, **extra: jnp.ndarray):
  """(loss, metrics) with the metrics every objective reports, then its own ``extra`` ones.

  'loss', 'kl' (for the deterministic models the regulariser that takes the KL's place,
  loss − gen), 'gen' (the reconstruction term), 'loggamma' (``outputs['loggamma']``) and 'mse'
  (the mean squared error of x̂ per data dimension).
  """
  metrics = {
      'loss': loss,
      'kl': kl,
      'gen': gen,
      'loggamma': outputs['loggamma'],
      'mse': jnp.mean(jnp.square(x - outputs['x_hat'])),
      **extra,
  }
  return loss, metrics


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
  gen = _reconstruction_nll(x, outputs, reconstruction_loss)
  return _loss_and_metrics(x, outputs, loss=beta * kl + gen, kl=kl, gen=gen)


def beta_conditioned_negative_elbo(x: jnp.ndarray, outputs: Mapping[str, jnp.ndarray], *,
                                   reconstruction_loss: str = 'gaussian'):
  """β·KL + Gen of the β-conditioned VAE (``models.BetaConditionedVAE``), β = exp of the
  batch's ``outputs['log_beta']`` (a scalar: one β per batch; or [B]: one per example, each
  weighting its own KL). Extra metrics: 'beta' and 'log_beta' (their batch means)."""
  kl_terms = (jnp.square(outputs['mu']) + jnp.square(outputs['sigma'])
              - 2.0 * outputs['log_sigma'] - 1.0)
  kl_per_example = jnp.sum(kl_terms.reshape(kl_terms.shape[0], -1), axis=-1) / 2.0
  beta = jnp.broadcast_to(jnp.exp(outputs['log_beta']), kl_per_example.shape)
  kl = jnp.sum(kl_per_example) / _batch_size(x)
  weighted_kl = jnp.sum(beta * kl_per_example) / _batch_size(x)
  gen = _reconstruction_nll(x, outputs, reconstruction_loss)
  return _loss_and_metrics(x, outputs, loss=weighted_kl + gen, kl=kl, gen=gen,
                           beta=jnp.mean(beta), log_beta=jnp.mean(outputs['log_beta']))


# ------------------------------------------------------------------------------ baselines
# Objectives of the stage-1 model families other than the reference VAE (config.stage1.model;
# models/baselines.py). Same conventions: sums over dims, means over the batch. Every one
# returns (loss, metrics) with at least the metrics of ``_loss_and_metrics``; for the
# deterministic models 'kl' holds the regulariser that takes the KL's place (loss − gen).

# The WAE code's (tolstikhin/wae, wae.py) inverse multiquadratic kernel scales.
WAE_IMQ_SCALES = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
# Their 'l2sq' cost: c(x, y) = 0.05·‖x − y‖².
WAE_L2SQ_SCALE = 0.05


def flow_kl(eps: jnp.ndarray, log_sigma: jnp.ndarray, log_det: jnp.ndarray,
            z: jnp.ndarray) -> jnp.ndarray:
  """Single-sample Monte-Carlo KL(q(z|x) ‖ N(0, I)) of an IAF posterior, batch mean.

  log q(z_K|x) = log N(z_0; μ, σ²) − Σ log |det ∂z_k/∂z_{k−1}| with z_0 = μ + σ·ε, so
  log N(z_0; μ, σ²) = Σ_i [−ε_i²/2 − log σ_i − ½ log 2π]; the KL estimate is
  log q(z_K|x) − log N(z_K; 0, I) = Σ_i [(z_K,i² − ε_i²)/2 − log σ_i] − log_det (the ½ log 2π
  terms cancel).

  Args:
    eps: [B, d] the noise of z_0; log_sigma: [B, d] the encoder's log σ; log_det: [B] the
      flow's Σ log |det|; z: [B, d] z_K.
  """
  per_example = (jnp.sum((jnp.square(z) - jnp.square(eps)) / 2.0 - log_sigma, axis=-1)
                 - log_det)
  return jnp.sum(per_example) / _batch_size(z)


def flow_negative_elbo(x: jnp.ndarray, outputs: Mapping[str, jnp.ndarray], *,
                       reconstruction_loss: str = 'gaussian', beta: float = 1.0):
  """β·KL_MC + Gen for the VAE with an IAF posterior (outputs of ``models.FlowVAE``)."""
  kl = flow_kl(outputs['eps'], outputs['log_sigma'], outputs['log_det'], outputs['z'])
  gen = _reconstruction_nll(x, outputs, reconstruction_loss)
  return _loss_and_metrics(x, outputs, loss=beta * kl + gen, kl=kl, gen=gen,
                           log_det=jnp.mean(outputs['log_det']))


def _squared_distances(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """‖a_i − b_j‖² [n, m], from the differences (exact, never negative)."""
  return jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1)


def imq_mmd(qz: jnp.ndarray, pz: jnp.ndarray, *, scales=WAE_IMQ_SCALES,
            prior_var: float = 1.0) -> jnp.ndarray:
  """Unbiased MMD² estimate between codes ``qz`` [n, d] and prior draws ``pz`` [n, d].

  The WAE paper's inverse multiquadratic kernel k(x, y) = C / (C + ‖x − y‖²) with
  C = 2·d·σ_z²·s, summed over the scales s of ``scales`` (their code's 0.1 ... 10); σ_z² is
  the prior's variance. As their ``mmd_penalty``: the within-sample terms exclude the diagonal
  (÷ n(n − 1)), the cross term averages all n² pairs (×2 ÷ n²).
  """
  qz, pz = jnp.asarray(qz), jnp.asarray(pz)
  n, d = qz.shape
  if n < 2:
    raise ValueError(f'imq_mmd needs at least 2 codes, got {n}')
  off_diagonal = 1.0 - jnp.eye(n, dtype=qz.dtype)
  d_qq, d_pp, d_qp = (_squared_distances(qz, qz), _squared_distances(pz, pz),
                      _squared_distances(qz, pz))
  stat = jnp.zeros((), qz.dtype)
  for scale in scales:
    c = 2.0 * d * prior_var * scale
    within = (c / (c + d_qq) + c / (c + d_pp)) * off_diagonal
    stat = stat + jnp.sum(within) / (n * (n - 1)) - 2.0 * jnp.sum(c / (c + d_qp)) / (n * n)
  return stat


def squared_error(x: jnp.ndarray, x_hat: jnp.ndarray) -> jnp.ndarray:
  """‖x − x̂‖² summed over the data dims, averaged over the batch."""
  return jnp.sum(jnp.square(x - x_hat)) / _batch_size(x)


def wae_mmd_loss(x: jnp.ndarray, outputs: Mapping[str, jnp.ndarray], *,
                 lambda_mmd: float = 10.0, recon_scale: float = WAE_L2SQ_SCALE):
  """WAE-MMD: recon_scale·‖x − x̂‖² + λ·MMD²_IMQ(z, z_prior) (outputs of a DeterministicAE)."""
  gen = recon_scale * squared_error(x, outputs['x_hat'])
  mmd = imq_mmd(outputs['z'], outputs['z_prior'])
  reg = lambda_mmd * mmd
  return _loss_and_metrics(x, outputs, loss=gen + reg, kl=reg, gen=gen, mmd=mmd)


def kernel_l2(params: Any) -> jnp.ndarray:
  """Σ w² over every leaf named 'kernel' (weights of dense / conv / transposed-conv layers;
  biases and BatchNorm scales and offsets are left out, as weight decay does)."""
  total = jnp.zeros((), jnp.float32)
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    last = path[-1]
    if getattr(last, 'key', getattr(last, 'name', None)) == 'kernel':
      total = total + jnp.sum(jnp.square(leaf))
  return total


def rae_loss(x: jnp.ndarray, outputs: Mapping[str, jnp.ndarray], decoder_params: Any, *,
             z_weight: float, decoder_l2: float):
  """RAE-L2: ‖x − x̂‖² + z_weight·½‖z‖² + decoder_l2·Σ‖W_dec‖² (per example, batch mean)."""
  gen = squared_error(x, outputs['x_hat'])
  z_penalty = jnp.sum(jnp.square(outputs['z'])) / 2.0 / _batch_size(x)
  l2 = kernel_l2(decoder_params)
  reg = z_weight * z_penalty + decoder_l2 * l2
  return _loss_and_metrics(x, outputs, loss=gen + reg, kl=reg, gen=gen, z_penalty=z_penalty,
                           decoder_l2=l2)


Objective = Callable[[jnp.ndarray, Mapping[str, jnp.ndarray], Any], Any]


def make_objective(model: str = 'vae', *, reconstruction_loss: str = 'gaussian',
                   beta: float = 1.0, lambda_mmd: float = 10.0,
                   recon_scale: float = WAE_L2SQ_SCALE, z_weight: float = 0.0,
                   decoder_l2: float = 0.0) -> Objective:
  """(x, outputs, params) → (loss, metrics) for a stage-1 model family (``models.STAGE1_MODELS``).

  'vae' is ``negative_elbo``; 'vae_flow' ``flow_negative_elbo`` (both use
  ``reconstruction_loss`` and ``beta``); 'vae_beta' ``beta_conditioned_negative_elbo`` (β drawn
  per batch by the model, ``beta`` unused); 'wae_mmd' ``wae_mmd_loss`` (``lambda_mmd``,
  ``recon_scale``); 'rae' ``rae_loss`` (``z_weight``, ``decoder_l2``, on params['decoder']).
  """
  if model == 'vae':
    return lambda x, outputs, params: negative_elbo(
        x, outputs, reconstruction_loss=reconstruction_loss, beta=beta)
  if model == 'vae_beta':
    return lambda x, outputs, params: beta_conditioned_negative_elbo(
        x, outputs, reconstruction_loss=reconstruction_loss)
  if model == 'vae_flow':
    return lambda x, outputs, params: flow_negative_elbo(
        x, outputs, reconstruction_loss=reconstruction_loss, beta=beta)
  if model == 'wae_mmd':
    return lambda x, outputs, params: wae_mmd_loss(
        x, outputs, lambda_mmd=lambda_mmd, recon_scale=recon_scale)
  if model == 'rae':
    return lambda x, outputs, params: rae_loss(
        x, outputs, params['decoder'], z_weight=z_weight, decoder_l2=decoder_l2)
  raise ValueError(f"Unknown stage-1 model {model!r}; expected 'vae', 'vae_flow', 'wae_mmd', "
                   "'rae' or 'vae_beta'.")
