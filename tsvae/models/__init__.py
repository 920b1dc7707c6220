"""Model registry: stage-1 architectures (InfoGAN-SN, WAE, ResNet) and model families (the
reference VAE, VAE + IAF, WAE-MMD, RAE), and the stage-2 VAE."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import math
from typing import Any

import jax.numpy as jnp

from tsvae import config_lib
from tsvae import losses
from tsvae.models.baselines import (DETERMINISTIC_LOG_SIGMA, DeterministicAE,
                                    DeterministicEncoder, FlowVAE, IAFFlow)
from tsvae.models.beta_conditioned import (BetaConditionedVAE, BetaInfoGANDecoder,
                                           BetaInfoGANEncoder, FiLM)
from tsvae.models.infogan import InfoGANDecoder, InfoGANEncoder
from tsvae.models.layers import ConvTranspose, conv_transpose, conv_transpose_reference
from tsvae.models.resnet import ResNetDecoder, ResNetEncoder
from tsvae.models.stage2 import Stage2Decoder, Stage2Encoder
from tsvae.models.vae import GAMMA_MODES, VAE
from tsvae.models.wae import WAEDecoder, WAEEncoder

STAGE1_ARCHS = ('infogan', 'wae', 'resnet')
# Stage-1 model families (config.stage1.model): the reference VAE, VAE + IAF posterior,
# WAE-MMD and RAE-L2 (deterministic encoders), and the β-conditioned VAE (issue #18; InfoGAN
# nets only, beta_conditioned.py). See baselines.py and losses.make_objective.
STAGE1_MODELS = ('vae', 'vae_flow', 'wae_mmd', 'rae', 'vae_beta')
DETERMINISTIC_MODELS = ('wae_mmd', 'rae')
BETA_CONDITIONED_ARCHS = ('infogan',)
# Defaults of stage1.beta_cond.beta_range and eval.beta_values (configs/default.py).
BETA_RANGE_DEFAULT = (0.1, 3.0)
EVAL_BETA_VALUES_DEFAULT = (0.1, 0.3, 1.0, 3.0)
# config.stageN.compute_dtype: the dtype of the nets' matmuls and convolutions (layers.py).
# Parameters, optimizer state, BatchNorm statistics and the loss are float32 either way.
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

_SUPPORTED_CHANNELS = (1, 3)
_INFOGAN_SIZES = (28, 32, 64)
_RESNET_KWARGS = ('num_scale', 'block_per_scale', 'depth_per_block', 'kernel_size',
                  'base_dim', 'fc_dim')


def _supports(arch: str) -> str:
  return {
      'infogan': f'square {"/".join(map(str, _INFOGAN_SIZES))} px images',
      'wae': 'square 64x64 images only',
      'resnet': 'square power-of-two sizes >= 4 (e.g. 32x32, 64x64)',
  }[arch]


def compute_dtype_of(name: str) -> Any:
  """The jnp dtype of ``name`` in ``COMPUTE_DTYPES``; raises ``ValueError`` for another name."""
  if name not in COMPUTE_DTYPES:
    raise ValueError(f'unknown compute dtype {name!r}; known: {", ".join(COMPUTE_DTYPES)}')
  return COMPUTE_DTYPES[name]


def _size_ok(arch: str, size: int) -> bool:
  if arch == 'infogan':
    return size in _INFOGAN_SIZES
  if arch == 'wae':
    return size == 64
  return size >= 4 and size & (size - 1) == 0  # resnet


def check_image_shape(arch: str, image_shape: Sequence[int]) -> tuple[int, int, int]:
  """Validates that stage-1 ``arch`` can model images of ``image_shape`` (H, W, C).

  Returns the shape as a tuple of ints; raises ``ValueError`` with a helpful message.
  """
  if arch not in STAGE1_ARCHS:
    raise ValueError(f'unknown stage-1 arch {arch!r}; known archs: {", ".join(STAGE1_ARCHS)}')
  shape = tuple(int(d) for d in image_shape)
  if len(shape) != 3:
    raise ValueError(f'arch {arch!r} needs image_shape (H, W, C), got {tuple(image_shape)!r}')
  h, w, c = shape
  shape_str = f'{h}x{w}x{c}'
  if h != w:
    raise ValueError(f"arch {arch!r} needs square images, got {shape_str}; it supports "
                     f'{_supports(arch)}')
  if c not in _SUPPORTED_CHANNELS:
    raise ValueError(f'arch {arch!r} supports 1 or 3 channels, got {shape_str}')
  if not _size_ok(arch, h):
    others = [a for a in STAGE1_ARCHS if a != arch and _size_ok(a, h)]
    hint = (f'; use arch={" or ".join(repr(a) for a in others)} for {h}x{w} images'
            if others else '')
    raise ValueError(f'arch {arch!r} supports {_supports(arch)}, got {shape_str}{hint}')
  return shape


def make_stage1_model(arch: str, image_shape: Sequence[int], latent_dim: int,
                      gamma: Mapping[str, Any] | None = None, model: str = 'vae',
                      model_kwargs: Mapping[str, Any] | None = None,
                      compute_dtype: str = 'float32', **arch_kwargs) -> VAE:
  """Stage-1 model (``loggamma_x``) for ``arch`` in ``STAGE1_ARCHS``, ``model`` in ``STAGE1_MODELS``.

  ``gamma`` holds VAE fields of the decoder variance (gamma_mode, gamma_value, loggamma_floor,
  running_mse_momentum, optimal_gamma_floor; see ``vae.py``). ``arch_kwargs`` are the ResNet knobs (num_scale, block_per_scale, depth_per_block,
  kernel_size, base_dim, fc_dim), ``fast_vjp`` (all archs; transposed-conv backward) and
  ``bn_zero_debias`` (all archs; bias-corrected BatchNorm averages, ``layers.batch_norm``).
  ``model`` and ``model_kwargs``: see ``build_stage1_model``. ``compute_dtype``: a key of
  ``COMPUTE_DTYPES``, the dtype of every matmul and convolution (float32 parameters either way).
  """
  _check_model(model, model_kwargs)
  shape = check_image_shape(arch, image_shape)
  if model == 'vae_beta' and arch not in BETA_CONDITIONED_ARCHS:
    raise ValueError(f"model 'vae_beta' has β-conditioned nets for arch "
                     f"{' or '.join(map(repr, BETA_CONDITIONED_ARCHS))} only, got {arch!r}")
  dtype = compute_dtype_of(compute_dtype)
  fast_vjp = arch_kwargs.pop('fast_vjp', True)
  shared = {'bn_zero_debias': bool(arch_kwargs.pop('bn_zero_debias', False)), 'dtype': dtype}
  if arch == 'resnet':
    unknown = sorted(set(arch_kwargs) - set(_RESNET_KWARGS))
    if unknown:
      raise TypeError(f'unknown resnet kwargs {unknown}; known: {list(_RESNET_KWARGS)}')
    enc_kw = dict(arch_kwargs)
    dec_kw = {k: v for k, v in arch_kwargs.items() if k not in ('num_scale', 'fc_dim')}
    encoder = ResNetEncoder(latent_dim, **enc_kw, **shared)
    decoder = ResNetDecoder(shape, fast_vjp=fast_vjp, **dec_kw, **shared)
  else:
    if arch_kwargs:
      raise TypeError(f'arch {arch!r} takes no extra kwargs, got {sorted(arch_kwargs)}')
    if arch == 'infogan' and model == 'vae_beta':
      chosen = {'log_beta': math.log(float((model_kwargs or {}).get('beta', 1.0)))}
      encoder = BetaInfoGANEncoder(latent_dim, **chosen, **shared)
      decoder = BetaInfoGANDecoder(shape, fast_vjp=fast_vjp, **chosen, **shared)
    elif arch == 'infogan':
      encoder = InfoGANEncoder(latent_dim, **shared)
      decoder = InfoGANDecoder(shape, fast_vjp=fast_vjp, **shared)
    else:
      encoder = WAEEncoder(latent_dim, **shared)
      decoder = WAEDecoder(shape, fast_vjp=fast_vjp, **shared)
  return build_stage1_model(model, encoder, decoder, gamma, model_kwargs, compute_dtype)


def _check_model(model: str, model_kwargs: Mapping[str, Any] | None):
  if model not in STAGE1_MODELS:
    raise ValueError(f'unknown stage-1 model {model!r}; known models: {", ".join(STAGE1_MODELS)}')
  known = {'vae_flow': ('flow_steps', 'flow_hidden'),
           'vae_beta': ('beta_range', 'beta')}.get(model, ())
  unknown = sorted(set(model_kwargs or {}) - set(known))
  if unknown:
    raise TypeError(f'model {model!r} takes model_kwargs {list(known)}, got {unknown}')


def build_stage1_model(model: str, encoder, decoder, gamma: Mapping[str, Any] | None = None,
                       model_kwargs: Mapping[str, Any] | None = None,
                       compute_dtype: str = 'float32') -> VAE:
  """The stage-1 model family ``model`` (``STAGE1_MODELS``) around an encoder and a decoder.

  ``gamma``: the VAE's decoder-variance fields. ``model_kwargs``: ``flow_steps``,
  ``flow_hidden`` for ``'vae_flow'``; ``beta_range`` (β_min, β_max) for ``'vae_beta'``, whose
  encoder and decoder must take ``log_beta`` (``beta_conditioned.py``; ``make_stage1_model``
  builds them with the chosen ``beta``); none for the others. The deterministic models
  (``'wae_mmd'``, ``'rae'``) take only ``running_mse_momentum`` from ``gamma``: their γ is always
  ½ log of a running MSE, reported and used for pixel noise only. ``compute_dtype``: that of
  the family's own layers (the IAF of ``'vae_flow'``); the encoder and decoder bring theirs.
  """
  _check_model(model, model_kwargs)
  gamma = dict(gamma or {})
  if model == 'vae_flow':
    return FlowVAE(encoder=encoder, decoder=decoder, gamma_name='loggamma_x', **gamma,
                   flow_dtype=compute_dtype_of(compute_dtype), **dict(model_kwargs or {}))
  if model == 'vae_beta':
    low, high = (model_kwargs or {}).get('beta_range', (0.1, 3.0))
    return BetaConditionedVAE(encoder=encoder, decoder=decoder, gamma_name='loggamma_x',
                              log_beta_min=math.log(low), log_beta_max=math.log(high), **gamma)
  if model in DETERMINISTIC_MODELS:
    return DeterministicAE(encoder=DeterministicEncoder(encoder), decoder=decoder,
                           gamma_name='loggamma_x', gamma_mode='running_mse',
                           running_mse_momentum=gamma.get('running_mse_momentum', 0.99))
  return VAE(encoder=encoder, decoder=decoder, gamma_name='loggamma_x', **gamma)


def make_stage2_model(latent_dim: int, depth: int = 3, width: int = 1024,
                      gamma: Mapping[str, Any] | None = None,
                      compute_dtype: str = 'float32') -> VAE:
  """Stage-2 VAE (``loggamma_z``): z -> u (dim latent_dim) -> z_hat.

  ``compute_dtype``: a key of ``COMPUTE_DTYPES``, the dtype of the dense layers' matmuls.
  """
  dtype = compute_dtype_of(compute_dtype)
  return VAE(encoder=Stage2Encoder(latent_dim, depth, width, dtype=dtype),
             decoder=Stage2Decoder(latent_dim, depth, width, dtype=dtype),
             gamma_name='loggamma_z', **dict(gamma or {}))


# ---------------------------------------------------------------------------------------------
# Config validation: the models' keys (tsvae.validation runs these with the others' checks).

_NO_FLOOR = float('-inf')


def validate_config(config, image_shape: Sequence[int]):
  """Checks the models' keys of ``config`` for images of ``image_shape`` (H, W, C): the arch,
  each stage's loss and decoder variance and compute dtype, BatchNorm, the stage-1 model
  family and its hyper-parameters. Raises ``config_lib.ConfigError``."""
  validate_arch_config(config)
  for stage in config_lib.STAGES:
    validate_stage_config(config, stage)
  validate_batch_norm_config(config)
  validate_stage1_model_config(config)
  validate_image_shape_config(config, image_shape)


def validate_arch_config(config):
  config_lib.check_choice(config.arch, STAGE1_ARCHS, 'arch')


def validate_stage_config(config, stage: str):
  """config.`stage`'s reconstruction loss, γ mode and value, running-MSE momentum, dtype."""
  s = config[stage]
  config_lib.check_choice(s.reconstruction_loss, losses.RECONSTRUCTION_LOSSES,
                          f'{stage}.reconstruction_loss')
  config_lib.check_choice(s.gamma_mode, GAMMA_MODES, f'{stage}.gamma_mode')
  config_lib.check_choice(s.get('compute_dtype', 'float32'), tuple(COMPUTE_DTYPES),
                          f'{stage}.compute_dtype')
  config_lib.check_positive(config, [f'{stage}.gamma_value'])
  momentum = s.running_mse_momentum
  if not 0.0 <= momentum < 1.0:
    raise config_lib.ConfigError(f'config.{stage}.running_mse_momentum must be in [0, 1), got '
                                 f'{momentum}.')


def validate_batch_norm_config(config):
  if not isinstance(config.stage1.bn_zero_debias, bool):
    raise config_lib.ConfigError('config.stage1.bn_zero_debias must be True or False, got '
                                 f'{config.stage1.bn_zero_debias!r}.')


def validate_stage1_model_config(config):
  """config.stage1.model, its hyper-parameters, and the keys that do not apply to it."""
  s1 = config.stage1
  config_lib.check_choice(s1.model, STAGE1_MODELS, 'stage1.model')
  if not isinstance(config.stage2.enabled, bool):
    raise config_lib.ConfigError(f'config.stage2.enabled must be True or False, got '
                                 f'{config.stage2.enabled!r}.')
  flat = config_lib.flatten(config)
  for key in ('stage1.flow.num_steps', 'stage1.flow.hidden'):
    value = flat[key]
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
      raise config_lib.ConfigError(f'config.{key} must be a positive integer, got {value!r}.')
  config_lib.check_positive(config, ['stage1.wae.recon_scale'])
  for key in ('stage1.wae.lambda_mmd', 'stage1.rae.z_weight', 'stage1.rae.decoder_l2'):
    value = flat[key]
    if (not isinstance(value, (int, float)) or isinstance(value, bool)
        or not math.isfinite(value) or value < 0):
      raise config_lib.ConfigError(f'config.{key} must be a finite number >= 0, got {value!r}.')
  if s1.model == 'vae_flow' and config.stage2.enabled:
    raise config_lib.ConfigError(
        "config.stage1.model='vae_flow' needs config.stage2.enabled=False: its posterior "
        'q(z|x) (a Gaussian pushed through an IAF) is not the Gaussian N(μ, σ²) whose '
        '(μ, σ) stage 2 is trained on, so the extracted latents would be wrong.')
  if s1.model == 'wae_mmd' and config.batch_size < 2:
    raise config_lib.ConfigError(
        "config.stage1.model='wae_mmd' needs config.batch_size >= 2 (the MMD compares pairs "
        f'of codes), got {config.batch_size}.')
  validate_beta_conditioned_config(config)
  if s1.model in DETERMINISTIC_MODELS:
    # The VAE-only keys would be silently ignored: refuse them instead.
    defaults = {'reconstruction_loss': 'gaussian', 'beta': 1.0, 'gamma_mode': 'learned',
                'gamma_value': 1.0, 'optimal_gamma_floor': _NO_FLOOR,
                'loggamma_floor': _NO_FLOOR}
    changed = [f'stage1.{k}={s1[k]!r}' for k, v in defaults.items() if s1[k] != v]
    if changed:
      raise config_lib.ConfigError(
          f'config.{", config.".join(changed)} has no effect with '
          f"config.stage1.model={s1.model!r}: a deterministic autoencoder has no KL and no "
          'decoder variance in its loss (γ is only reported, as ½ log of a running MSE). '
          'Leave these keys at their defaults.')


def _beta_cond(config) -> Mapping[str, Any]:
  """config.stage1.beta_cond, or its implicit defaults where a config has no such block."""
  block = config.stage1.get('beta_cond', None)
  return {'beta_range': tuple(block.get('beta_range', BETA_RANGE_DEFAULT)) if block is not None
          else BETA_RANGE_DEFAULT,
          'beta': block.get('beta', 1.0) if block is not None else 1.0}


def _positive_finite(value) -> bool:
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value) and value > 0)


def validate_beta_conditioned_config(config):
  """The β-conditioned VAE's keys: stage1.beta_cond.beta_range (β_min < β_max, both > 0),
  stage1.beta_cond.beta (the chosen β, inside the range), eval.beta_values (the β's of the
  rate-distortion evaluation, inside the range); and neither they nor stage1.beta may be set
  where they would be ignored."""
  s1 = config.stage1
  block = s1.get('beta_cond', None)
  raw_range = block.get('beta_range', BETA_RANGE_DEFAULT) if block is not None else (
      BETA_RANGE_DEFAULT)
  if (not isinstance(raw_range, (tuple, list)) or len(raw_range) != 2
      or not all(_positive_finite(v) for v in raw_range) or not raw_range[0] < raw_range[1]):
    raise config_lib.ConfigError(
        'config.stage1.beta_cond.beta_range is the (beta_min, beta_max) range log beta is '
        'drawn from (uniformly) in training and must be two finite numbers with 0 < beta_min '
        f'< beta_max, e.g. (0.1, 3.0); got {raw_range!r}.')
  cond = _beta_cond(config)
  low, high = cond['beta_range']
  if not _positive_finite(cond['beta']):
    raise config_lib.ConfigError('config.stage1.beta_cond.beta (the beta at which the '
                                 "beta-conditioned VAE is used) must be a finite number > 0, "
                                 f"got {cond['beta']!r}.")
  values = config.eval.get('beta_values', EVAL_BETA_VALUES_DEFAULT)
  if (not isinstance(values, (tuple, list)) or not values
      or not all(_positive_finite(v) for v in values)):
    raise config_lib.ConfigError('config.eval.beta_values (the beta values the beta-conditioned '
                                 'VAE is evaluated at) must be a non-empty list of finite '
                                 f'numbers > 0, got {values!r}.')
  if s1.model == 'vae_beta':
    if config.arch not in BETA_CONDITIONED_ARCHS:
      raise config_lib.ConfigError(
          f"config.stage1.model='vae_beta' has beta-conditioned nets for "
          f"config.arch={' or '.join(map(repr, BETA_CONDITIONED_ARCHS))} only, got "
          f'{config.arch!r}.')
    if s1.beta != 1.0:
      raise config_lib.ConfigError(
          f"config.stage1.beta={s1.beta!r} has no effect with config.stage1.model='vae_beta': "
          'its training draws beta from config.stage1.beta_cond.beta_range, and '
          'config.stage1.beta_cond.beta chooses the beta it is used at. Leave stage1.beta at 1.')
    outside = [v for v in (cond['beta'],) + tuple(values)
               if not low * (1 - 1e-9) <= v <= high * (1 + 1e-9)]
    if outside:
      raise config_lib.ConfigError(
          f'config.stage1.beta_cond.beta={cond["beta"]!r} and config.eval.beta_values='
          f'{list(values)!r} must lie in the trained range config.stage1.beta_cond.beta_range='
          f'({low:g}, {high:g}); outside it: {outside}.')
  elif (tuple(cond['beta_range']) != BETA_RANGE_DEFAULT or cond['beta'] != 1.0):
    raise config_lib.ConfigError(
        f'config.stage1.beta_cond.* has no effect with config.stage1.model={s1.model!r}; '
        "it configures stage1.model='vae_beta'. Leave these keys at their defaults.")


def validate_image_shape_config(config, image_shape: Sequence[int]):
  """config.arch can model the images of config.dataset (``image_shape``, H x W x C)."""
  try:
    check_image_shape(config.arch, image_shape)
  except ValueError as e:
    shape = tuple(image_shape)
    raise config_lib.ConfigError(f'config.dataset={config.dataset!r} gives {shape[0]}x'
                                 f'{shape[1]}x{shape[2]} images: {e}') from None


__all__ = [
    'COMPUTE_DTYPES', 'GAMMA_MODES', 'STAGE1_ARCHS', 'STAGE1_MODELS', 'DETERMINISTIC_MODELS',
    'VAE', 'FlowVAE', 'BetaConditionedVAE', 'BetaInfoGANEncoder', 'BetaInfoGANDecoder', 'FiLM',
    'BETA_CONDITIONED_ARCHS',
    'DeterministicAE', 'DeterministicEncoder', 'IAFFlow', 'DETERMINISTIC_LOG_SIGMA',
    'build_stage1_model', 'check_image_shape', 'compute_dtype_of', 'make_stage1_model',
    'make_stage2_model', 'validate_config',
    'InfoGANEncoder', 'InfoGANDecoder', 'ResNetEncoder', 'ResNetDecoder', 'Stage2Encoder',
    'Stage2Decoder', 'WAEEncoder', 'WAEDecoder', 'ConvTranspose', 'conv_transpose', 'conv_transpose_reference',
]
