"""The whole Two-Stage VAE run: stage 1 → latent extraction → stage 2 → sample grids.

With ``config.stage2.enabled=False`` (the single-stage baselines) the run is stage 1 → the
stage-1 sample and reconstruction grids: no latents, no stage 2, no stage-2 grid.

Each phase leaves a durable record in the workdir and is skipped when a rerun finds it:

  <workdir>/config.json              the experiment this workdir holds (checked on every run)
  <workdir>/stage1/checkpoints/<n>   Orbax checkpoints;  <workdir>/stage1/COMPLETE when done
  <workdir>/latents/                 (μ_z, σ_z) of the training split as a tfds dataset
  <workdir>/stage2/...               as stage 1
  <workdir>/samples/*.png            stage-2 samples, stage-1 (prior) samples, reconstructions
  <workdir>/metrics.jsonl, tensorboard/

An unfinished stage resumes from its latest checkpoint.
"""

import os
from typing import Any, Dict, Optional, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
import tensorflow_datasets as tfds

from tsvae import checkpointing
from tsvae import config_lib
from tsvae import faults
from tsvae import fileio
from tsvae import images
from tsvae import input_pipeline
from tsvae import losses
from tsvae import models
from tsvae import sampling
from tsvae import train
from tsvae import validation
from tsvae import workdir_lock

LATENTS_DIR = 'latents'
SAMPLES_DIR = 'samples'
# Independent PRNG streams, folded into PRNGKey(config.seed).
_STAGE1_STREAM, _STAGE2_STREAM, _SAMPLING_STREAM = 1, 2, 3


def gamma_fields(stage_config) -> Dict[str, Any]:
  """The VAE's decoder-variance fields from a stage config."""
  return {k: stage_config[k] for k in ('gamma_mode', 'gamma_value', 'loggamma_floor',
                                       'running_mse_momentum', 'optimal_gamma_floor')}


def stage1_model_kwargs(config) -> Dict[str, Any]:
  """``make_stage1_model``'s model and model_kwargs for ``config.stage1.model``."""
  s1 = config.stage1
  kwargs = {'flow_steps': s1.flow.num_steps, 'flow_hidden': s1.flow.hidden} if (
      s1.model == 'vae_flow') else {}
  return {'model': s1.model, 'model_kwargs': kwargs}


def stage1_objective(config) -> losses.Objective:
  """The stage-1 loss of ``config.stage1.model`` (``losses.make_objective``)."""
  s1 = config.stage1
  return losses.make_objective(
      s1.model, reconstruction_loss=s1.reconstruction_loss, beta=s1.beta,
      lambda_mmd=s1.wae.lambda_mmd, recon_scale=s1.wae.recon_scale,
      z_weight=s1.rae.z_weight, decoder_l2=s1.rae.decoder_l2)


def _barrier(name: str):
  """Waits for every process (no-op in a single-process run)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


class Experiment:
  """The validated config plus everything derived from it (models, data, mesh)."""

  def __init__(self, config, workdir: str, devices: Optional[Sequence[jax.Device]] = None):
    self.config = config
    self.workdir = workdir
    self.mesh = train.make_mesh(devices)
    # Everything that can fail on bad input fails here, before any compute or write.
    validation.validate_config(config, num_devices=self.mesh.size,
                               num_processes=jax.process_count())
    if config.data.manual_dir:
      input_pipeline.validate_manual_dir(config.dataset, config.data.manual_dir)
    config_lib.check_workdir(config, workdir)

    self.fingerprint = checkpointing.fingerprint(config_lib.experiment_keys(config))
    self.image_shape = input_pipeline.image_shape(config.dataset)
    arch_kwargs = dict(config.resnet) if config.arch == 'resnet' else {}
    self.model1 = models.make_stage1_model(
        config.arch, self.image_shape, config.latent_dim, gamma=gamma_fields(config.stage1),
        bn_zero_debias=config.stage1.bn_zero_debias,
        compute_dtype=config.stage1.get('compute_dtype', 'float32'),
        **stage1_model_kwargs(config), **arch_kwargs)
    self.model2 = models.make_stage2_model(
        config.latent_dim, config.stage2.depth, config.stage2.width,
        gamma=gamma_fields(config.stage2),
        compute_dtype=config.stage2.get('compute_dtype', 'float32'))
    self.root_rng = jax.random.PRNGKey(config.seed)
    self._builder = None

  @property
  def builder(self):
    """The image dataset builder (prepares the data on first use)."""
    if self._builder is None:
      def prepare():
        return input_pipeline.get_builder(
            self.config.dataset, data_dir=self.config.data.data_dir or None,
            manual_dir=self.config.data.manual_dir or None)
      # Process 0 prepares the data once; the others then find it prepared.
      if jax.process_index() == 0:
        self._builder = prepare()
      _barrier('data prepared')
      if self._builder is None:
        self._builder = prepare()
    return self._builder

  def steps_per_epoch(self, num_examples: int, batch_size: Optional[int] = None) -> int:
    batch_size = batch_size or self.config.batch_size
    per_process = num_examples // jax.process_count()
    steps = per_process // (batch_size // jax.process_count())
    if steps == 0:
      raise input_pipeline.DataError(
          f'{num_examples} training examples give no full batch of {batch_size}.')
    return steps

  def _train_kwargs(self):
    c = self.config
    return dict(mesh=self.mesh, workdir=self.workdir, experiment_fingerprint=self.fingerprint,
                log_every_steps=c.log_every_steps,
                checkpoint_every_steps=c.checkpoint_every_steps,
                keep_checkpoints=c.keep_checkpoints, nan_policy=c.nan_policy,
                steps_per_call=c.get('steps_per_call', 1))

  def _device_data(self, num_bytes: int, load, epoch_rows) -> Optional[train.DeviceData]:
    """`train.DeviceData` when scanned steps run and `num_bytes` fit data.device_resident_max_mb.

    None keeps the host batches (stacked per call when steps_per_call > 1).
    """
    c = self.config
    budget_mb = c.data.get('device_resident_max_mb', 0)
    if c.get('steps_per_call', 1) == 1 or num_bytes > budget_mb * 2**20:
      return None
    return train.DeviceData(load=load, epoch_rows=epoch_rows)

  # ------------------------------------------------------------------------- stages

  def stage1_spec(self) -> train.StageSpec:
    c = self.config
    builder = self.builder
    steps = self.steps_per_epoch(input_pipeline.num_examples(builder, 'train'))

    def epoch_batches(epoch, skip):
      return tfds.as_numpy(input_pipeline.make_image_dataset(
          builder, 'train', dataset=c.dataset, global_batch_size=c.batch_size,
          shuffle_seed=c.seed, epoch=epoch, skip_batches=skip,
          shuffle_buffer=c.data.shuffle_buffer,
          outlier_fraction=c.data.get('outlier_fraction', 0.0),
          outlier_seed=c.data.get('outlier_seed', 0)))

    local_batch = c.batch_size // jax.process_count()
    return train.StageSpec(
        name='stage1', model=self.model1, config=c.stage1, prepare_input=train.image_input,
        example_input=np.zeros((local_batch,) + tuple(self.image_shape), np.float32),
        steps_per_epoch=steps, epoch_batches=epoch_batches,
        base_rng=jax.random.fold_in(self.root_rng, _STAGE1_STREAM),
        examples_per_batch=c.batch_size, objective=stage1_objective(c),
        device_data=self._stage1_device_data())

  def _stage1_device_data(self) -> Optional[train.DeviceData]:
    """The uint8 training split on the devices: in-memory data sets without outlier noise."""
    c = self.config
    if (c.dataset not in input_pipeline.IN_MEMORY_DATASETS
        or c.data.get('outlier_fraction', 0.0) > 0):  # The noise is added on the host (tf).
      return None
    builder = self.builder
    num_train = input_pipeline.num_examples(builder, 'train')

    def load():
      return {'image': input_pipeline.training_images(builder, 'train', c.dataset)}

    def epoch_rows(epoch):
      return input_pipeline.epoch_rows(num_train, c.batch_size, c.seed, epoch)

    return self._device_data(num_train * int(np.prod(self.image_shape)), load, epoch_rows)

  def stage2_spec(self) -> train.StageSpec:
    c = self.config
    latents = input_pipeline.read_latent_dataset_builder(self.latents_dir)
    batch_size = config_lib.stage2_batch_size(c)
    steps = self.steps_per_epoch(latents.num_examples, batch_size)

    def epoch_batches(epoch, skip):
      return tfds.as_numpy(input_pipeline.make_latent_dataset(
          latents, global_batch_size=batch_size, shuffle_seed=c.seed + 1, epoch=epoch,
          skip_batches=skip))

    def epoch_rows(epoch):
      return input_pipeline.epoch_rows(latents.num_examples, batch_size, c.seed + 1, epoch)

    device_data = self._device_data(
        latents.num_examples * latents.latent_dim * 2 * 4,  # μ and σ, float32.
        lambda: latents.load(0, latents.num_examples), epoch_rows)
    local_batch = batch_size // jax.process_count()
    example = np.zeros((local_batch, c.latent_dim), np.float32)
    return train.StageSpec(
        name='stage2', model=self.model2, config=c.stage2, prepare_input=train.latent_input,
        example_input=example, steps_per_epoch=steps, epoch_batches=epoch_batches,
        base_rng=jax.random.fold_in(self.root_rng, _STAGE2_STREAM),
        examples_per_batch=batch_size, device_data=device_data)

  def restore_stage(self, name: str) -> train.TrainState:
    """The final state of a completed stage ('stage1' or 'stage2')."""
    if not checkpointing.is_complete(self.workdir, name):
      raise checkpointing.CheckpointError(
          f'{name} of {self.workdir} is not complete; run tsvae.main on it first.')
    spec = self.stage1_spec() if name == 'stage1' else self.stage2_spec()
    return self.run_stage(spec)

  def run_stage(self, spec: train.StageSpec) -> train.TrainState:
    """Trains the stage to completion, or only restores it when it is already complete."""
    marker = fileio.read_json(
        os.path.join(checkpointing.stage_dir(self.workdir, spec.name),
                     checkpointing.COMPLETE_MARKER))
    if marker is not None:
      logging.info('%s is complete (step %d); restoring it.', spec.name, marker['step'])
      return train.train_stage(spec, target_steps=marker['step'], **self._train_kwargs())
    state = train.train_stage(spec, **self._train_kwargs())
    checkpointing.mark_complete(self.workdir, spec.name, {'step': int(state.step)})
    return state

  # ------------------------------------------------------------------------- latents

  @property
  def latents_dir(self) -> str:
    return os.path.join(self.workdir, LATENTS_DIR)

  def latents_exist(self) -> bool:
    try:
      input_pipeline.read_latent_dataset_builder(self.latents_dir)
      return True
    except input_pipeline.CorruptLatents:
      raise  # Complete once, damaged since: an error, never silently encoded again.
    except input_pipeline.DataError:
      return False

  def encode_split(self, state1, split: str = 'train'):
    """(μ_z, σ_z) of every example of `split`, in order, inference mode."""
    c = self.config
    variables = sampling.variables_of(state1)
    mus, sigmas = [], []
    # Inference mode (BN running averages, stored spectral-norm vectors): the codes do not
    # depend on the batch size, so a large one is used for speed.
    batch_size = c.eval.batch_size
    dataset = input_pipeline.make_eval_dataset(self.builder, split, c.dataset, batch_size)
    for batch in tfds.as_numpy(dataset):
      x = train.image_input(batch, None)
      n = len(x)
      if n < batch_size:  # Pad the last batch so that one compiled shape serves all.
        x = np.concatenate([x, np.zeros((batch_size - n,) + x.shape[1:], x.dtype)])
      mu, sigma = jax.device_get(sampling.encode_batch(self.model1, variables, x))
      mus.append(mu[:n])
      sigmas.append(sigma[:n])
    return np.concatenate(mus), np.concatenate(sigmas)

  def extract_latents(self, state1):
    exists = self.latents_exist()
    _barrier('latents checked')  # Every process decides before process 0 writes anything.
    if exists:
      logging.info('Latents found in %s; skipping extraction.', self.latents_dir)
      return
    logging.info('Encoding the training split into %s', self.latents_dir)
    mu, sigma = self.encode_split(state1)
    if jax.process_index() == 0:
      input_pipeline.write_latent_dataset(self.latents_dir, mu, sigma)
    _barrier('latents written')
    logging.info('Stored %d latent codes (mean σ² %.4f).', len(mu), float(np.mean(sigma**2)))

  # ------------------------------------------------------------------------- sampling

  def write_samples(self, state1, state2=None) -> Dict[str, str]:
    """The sample grids; without ``state2`` (stage 2 disabled) no stage-2 grid."""
    c = self.config
    n = c.sampling.num_grid_images
    v1 = sampling.variables_of(state1)
    rng = jax.random.fold_in(self.root_rng, _SAMPLING_STREAM)
    r2, r1, rr = jax.random.split(rng, 3)
    stage2 = None
    if state2 is not None:
      stage2 = sampling.generate_stage2(self.model1, v1, self.model2,
                                        sampling.variables_of(state2), r2, n,
                                        pixel_noise=c.sampling.pixel_noise,
                                        noise_scale=c.sampling.stage2_noise_scale)
    stage1 = sampling.generate_stage1(self.model1, v1, r1, n, latent_dim=c.latent_dim,
                                      pixel_noise=c.sampling.pixel_noise)
    num_originals = max(1, n // 2)
    test_images = next(iter(tfds.as_numpy(input_pipeline.make_eval_dataset(
        self.builder, 'test', c.dataset, num_originals))))
    originals = train.image_input(test_images, None)
    recons = sampling.reconstruct(self.model1, v1, np.asarray(originals), rr)
    paths = {
        'stage2_samples': os.path.join(self.workdir, SAMPLES_DIR, 'stage2_samples.png'),
        'stage1_samples': os.path.join(self.workdir, SAMPLES_DIR, 'stage1_samples.png'),
        'reconstructions': os.path.join(self.workdir, SAMPLES_DIR, 'reconstructions.png'),
    }
    if stage2 is None:
      del paths['stage2_samples']
    if jax.process_index() == 0:
      cols = int(np.ceil(np.sqrt(n)))
      if stage2 is not None:
        images.save_grid(paths['stage2_samples'], stage2, cols)
      faults.kill_here('samples.write')
      images.save_grid(paths['stage1_samples'], stage1, cols)
      images.save_grid(paths['reconstructions'], images.interleave(originals, recons),
                       cols + cols % 2)
      logging.info('Wrote sample grids to %s', os.path.dirname(paths['stage1_samples']))
    return paths

  # ------------------------------------------------------------------------- all

  def run(self) -> Dict[str, Any]:
    """The whole run, holding the workdir's lock (WorkdirBusy if another process writes it)."""
    with workdir_lock.hold(self.workdir, 'tsvae.main'):
      # Checked again: another writer may have recorded its config since __init__ checked.
      config_lib.check_workdir(self.config, self.workdir)
      return self._run_locked()

  def plan(self) -> str:
    """One line: the steps each stage will train (before any of them runs)."""
    c = self.config
    num_train = input_pipeline.num_examples(self.builder, 'train')
    parts = []
    for name, stage, batch in (('stage 1', c.stage1, c.batch_size),
                               ('stage 2', c.stage2, config_lib.stage2_batch_size(c))):
      if name == 'stage 2' and not c.stage2.enabled:
        parts.append('stage 2 off')
        continue
      per_epoch = self.steps_per_epoch(num_train, batch)
      steps = train.total_steps(stage, per_epoch)
      capped = ' (max_steps cap)' if steps < stage.num_epochs * per_epoch else ''
      parts.append(f'{name} {steps} steps{capped} ({stage.num_epochs} epochs x {per_epoch} '
                   f'steps of batch {batch})')
    evaluation = (f'evaluation of {c.eval.num_samples} samples' if c.eval.enabled
                  else 'no evaluation')
    return f'Plan for {self.workdir}: ' + ', '.join(parts) + f', then {evaluation}.'

  def _run_locked(self) -> Dict[str, Any]:
    if jax.process_index() == 0:
      config_lib.record_config(self.config, self.workdir)
    logging.info('%s', self.plan())
    state1 = self.run_stage(self.stage1_spec())
    state2 = None
    if self.config.stage2.enabled:
      self.extract_latents(state1)
      state2 = self.run_stage(self.stage2_spec())
    else:
      logging.info('stage2.enabled=False: no latent extraction, no stage 2.')
    paths = self.write_samples(state1, state2)
    result = {'state1': state1, 'state2': state2, 'samples': paths}
    if self.config.eval.enabled:  # state2 None: the evaluation's single-stage mode.
      from tsvae import evaluate  # pylint: disable=g-import-not-at-top  (avoids an import cycle)
      result['eval'] = evaluate.evaluate_experiment(self, state1, state2)
    return result


def run(config, workdir: str, devices: Optional[Sequence[jax.Device]] = None):
  """Validates, then runs (or resumes) the whole two-stage experiment in `workdir`."""
  return Experiment(config, workdir, devices).run()
