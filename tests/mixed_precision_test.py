"""config.stageN.compute_dtype (issue #17): bfloat16 matmuls and convolutions, float32 the rest.

bf16 compiles and trains on every stage-1 arch and on the stage-2 MLP; the loss, log γ and the
model outputs stay float32; parameters, optimizer state and checkpoints are float32 either way;
at initialisation bf16 gives the float32 loss to a loose tolerance; a bad value is refused
before any compute. The nets are the smallest each arch allows (compiling dominates).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testdata import tiny_config
from tsvae import checkpointing
from tsvae import config_lib
from tsvae import losses
from tsvae import models
from tsvae import train
from tsvae import experiment as experiment_lib
from tsvae import validation

BATCH = 2
LATENT = 8
# The smallest net of each arch; depth_per_block=1 also keeps the ResNet's compile short.
ARCH_CASES = [
    ('infogan', (28, 28, 1), {}),
    ('wae', (64, 64, 1), {}),
    ('resnet', (8, 8, 1), dict(num_scale=2, block_per_scale=1, depth_per_block=1,
                               kernel_size=3, base_dim=4, fc_dim=8)),
]
# Relative gap allowed between the bf16 and float32 losses at initialisation: bf16 keeps 8
# significant bits, so each product is off by ~0.4% at most; summed over the data dims the
# loss moves far less.
INIT_LOSS_RTOL = 1e-2


def _dtypes(tree):
  return {str(leaf.dtype) for leaf in jax.tree_util.tree_leaves(tree)}


def _images(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (BATCH, *shape), dtype=np.uint8)


def _state(model, example, base_rng=None):
  """A TrainState; by default with an 'rbg' key, whose jitted init XLA:CPU compiles much faster
  than threefry's (models_test.py). A small lr: one Adam step at 1e-4 already sends the WAE's
  KL to inf on these noise images, in float32 as in bf16 (its heads read 65536 ReLU features)."""
  base_rng = jax.random.key(0, impl='rbg') if base_rng is None else base_rng
  return train.create_train_state(model, example, base_rng=base_rng,
                                  tx=train.make_optimizer(lambda step: 1e-5))


def _first_step_loss(model, state, x):
  """The loss of the train step at step 0 (same noise), forward only."""
  noise_rng = jax.random.split(jax.random.fold_in(state.rng, 0))[1]

  @jax.jit
  def loss(variables):
    outputs, _ = model.apply(variables, x, train=True, rngs={'noise': noise_rng},
                             mutable=['batch_stats'])
    return losses.negative_elbo(x, outputs)[0]

  return float(loss({'params': state.params, 'batch_stats': state.batch_stats}))


def _train(model, state, batch, prepare_input, steps=2):
  mesh = train.make_mesh(jax.devices()[:1])
  step = train.jit_train_step(train.make_train_step(
      model, prepare_input=prepare_input, objective=losses.make_objective('vae')), mesh)
  history = []
  for _ in range(steps):
    state, metrics = step(state, train.shard_batch(batch, mesh))
    history.append(jax.device_get(metrics))
  return state, history


def _check_float32(state, history):
  for metrics in history:
    for key in ('loss', 'kl', 'gen', 'loggamma', 'mse', 'grad_norm'):
      assert metrics[key].dtype == np.float32, key
      assert np.isfinite(metrics[key]), (key, metrics)
  assert _dtypes(state.params) == {'float32'}
  assert _dtypes(state.batch_stats) <= {'float32'}
  assert _dtypes(state.opt_state) == {'float32', 'int32'}  # Adam's moments and its count.


@pytest.mark.parametrize('arch,shape,kw', ARCH_CASES, ids=[c[0] for c in ARCH_CASES])
def test_stage1_bf16_trains_in_float32_state(arch, shape, kw):
  f32 = models.make_stage1_model(arch, shape, LATENT, **kw)
  bf16 = models.make_stage1_model(arch, shape, LATENT, compute_dtype='bfloat16', **kw)
  example = np.zeros((BATCH, *shape), np.float32)
  state = _state(bf16, example)
  # The float32 model has the same parameters (initialisers do not depend on the compute
  # dtype): one checkpoint layout.
  f32_params = jax.eval_shape(lambda: _state(f32, example).params)
  assert jax.tree_util.tree_structure(f32_params) == jax.tree_util.tree_structure(
      state.params)
  batch = {'image': _images(shape)}
  x = train.image_input(batch, None)
  loss_f32 = _first_step_loss(f32, state, x)
  state, history = _train(bf16, state, batch, train.image_input)
  _check_float32(state, history)
  np.testing.assert_allclose(history[0]['loss'], loss_f32, rtol=INIT_LOSS_RTOL)
  assert float(state.params['loggamma_x']) != 0.0  # It trained.


def test_stage2_bf16_trains_in_float32_state():
  rng = np.random.default_rng(1)
  batch = {'mu': rng.normal(size=(BATCH, LATENT)).astype(np.float32),
           'sigma': rng.uniform(0.1, 1.0, size=(BATCH, LATENT)).astype(np.float32)}
  f32 = models.make_stage2_model(LATENT, depth=2, width=32)
  bf16 = models.make_stage2_model(LATENT, depth=2, width=32, compute_dtype='bfloat16')
  example = np.zeros((BATCH, LATENT), np.float32)
  state = _state(bf16, example)
  z = train.latent_input(batch, jax.random.split(jax.random.fold_in(state.rng, 0))[0])
  loss_f32 = _first_step_loss(f32, state, z)
  state, history = _train(bf16, state, batch, train.latent_input, steps=3)
  _check_float32(state, history)
  np.testing.assert_allclose(history[0]['loss'], loss_f32, rtol=INIT_LOSS_RTOL)


def test_tiny_gamma_stays_finite_in_bf16():
  """The outputs are float32, so (z − ẑ)/γ is formed in float32 and γ → 0 is as in float32."""
  z = np.random.default_rng(2).normal(size=(BATCH, LATENT)).astype(np.float32)
  state = _state(models.make_stage2_model(LATENT, depth=1, width=16), z)
  params = dict(state.params, loggamma_z=jnp.float32(-30.0))  # γ ≈ 1e-13.
  gen = {}
  for dtype in ('float32', 'bfloat16'):
    model = models.make_stage2_model(LATENT, depth=1, width=16, compute_dtype=dtype)
    outputs = model.apply({'params': params}, z, train=False, rngs={'noise': jax.random.key(1)})
    assert {k: str(v.dtype) for k, v in outputs.items()} == dict.fromkeys(outputs, 'float32')
    gen[dtype] = float(losses.negative_elbo(z, outputs)[1]['gen'])
    assert np.isfinite(gen[dtype]) and gen[dtype] > 1e20, gen
  np.testing.assert_allclose(gen['bfloat16'], gen['float32'], rtol=INIT_LOSS_RTOL)


def test_bf16_checkpoint_holds_float32(tmp_path):
  model = models.make_stage2_model(LATENT, depth=1, width=16, compute_dtype='bfloat16')
  state = _state(model, np.zeros((BATCH, LATENT), np.float32), jax.random.PRNGKey(0))
  ckpt = checkpointing.StageCheckpointer(str(tmp_path), 'stage2', experiment_fingerprint='f')
  ckpt.save(0, state, {})
  restored, _ = ckpt.restore(0, None)  # As stored, not cast to a template.
  ckpt.close()
  assert _dtypes(restored['params']) == {'float32'}
  assert _dtypes(restored['opt_state']) == {'float32', 'int32'}


def test_config_threads_compute_dtype_to_the_models(tmp_path):
  config = tiny_config(stage1__compute_dtype='bfloat16', stage2__compute_dtype='bfloat16')
  experiment = experiment_lib.setup(config, str(tmp_path))
  nets = (experiment.model1.encoder, experiment.model1.decoder, experiment.model2.encoder,
          experiment.model2.decoder)
  assert [net.dtype for net in nets] == [jnp.bfloat16] * 4
  config = tiny_config(stage2__compute_dtype='bfloat16')
  experiment = experiment_lib.setup(config, str(tmp_path))
  assert experiment.model1.encoder.dtype == experiment.model1.decoder.dtype == jnp.float32
  assert experiment.model2.encoder.dtype == jnp.bfloat16


def test_make_stage1_model_threads_the_dtype():
  model = models.make_stage1_model('infogan', (28, 28, 1), LATENT, compute_dtype='bfloat16',
                                   model='vae_flow')
  assert model.encoder.dtype == model.decoder.dtype == model.flow_dtype == jnp.bfloat16
  assert models.make_stage1_model('wae', (64, 64, 1), LATENT).decoder.dtype == jnp.float32


@pytest.mark.parametrize('stage,value', [('stage1', 'bf16'), ('stage2', 'float16')])
def test_bad_compute_dtype_rejected_before_compute(tmp_path, stage, value):
  config = tiny_config(**{f'{stage}__compute_dtype': value})
  with pytest.raises(config_lib.ConfigError,
                     match=rf"config\.{stage}\.compute_dtype='{value}' is not one of "
                     r"\['float32', 'bfloat16'\]"):
    experiment_lib.setup(config, str(tmp_path))
  assert not list(tmp_path.iterdir())  # Nothing written.
  with pytest.raises(ValueError, match='bfloat16'):
    models.make_stage2_model(LATENT, compute_dtype=value)


def test_suggestion_and_fingerprint():
  config = tiny_config(stage1__compute_dtype='bf16')
  with pytest.raises(config_lib.ConfigError, match="Did you mean 'bfloat16'"):
    validation.validate_config(config, num_devices=1)
  # float32, the implicit default, leaves existing workdirs' fingerprints unchanged.
  assert not any('compute_dtype' in k for k in config_lib.experiment_keys(tiny_config()))
  keys = config_lib.experiment_keys(tiny_config(stage2__compute_dtype='bfloat16'))
  assert keys['stage2.compute_dtype'] == 'bfloat16' and 'stage1.compute_dtype' not in keys
