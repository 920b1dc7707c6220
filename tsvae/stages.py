"""The two training stages: what each trains on (`train.StageSpec`), training a stage to its end,
and restoring a finished one without its data.

  stage 1: the image VAE on the training split (uint8 images, fed as floats in [0, 1]);
  stage 2: the latent VAE on (μ_z, σ_z) of that split, z redrawn every step.

`train_or_restore` trains an unfinished stage (resuming its latest checkpoint) and marks it
complete; a complete stage is only restored. `restore_final` restores a complete stage from its
checkpoint alone: it needs neither the data set nor the latents.
"""

import os
from typing import Any, Dict, Optional

from absl import logging
import jax
import numpy as np

from tsvae import checkpointing
from tsvae import config_lib
from tsvae import experiment
from tsvae import fileio
from tsvae import input_pipeline
from tsvae import latents
from tsvae import losses
from tsvae import train

STAGES = ('stage1', 'stage2')


def stage1_objective(config) -> losses.Objective:
  """The stage-1 loss of ``config.stage1.model`` (``losses.make_objective``)."""
  s1 = config.stage1
  return losses.make_objective(
      s1.model, reconstruction_loss=s1.reconstruction_loss, beta=s1.beta,
      lambda_mmd=s1.wae.lambda_mmd, recon_scale=s1.wae.recon_scale,
      z_weight=s1.rae.z_weight, decoder_l2=s1.rae.decoder_l2)


def stage2_objective(config) -> losses.Objective:
  """The stage-2 loss: the ELBO of the latent VAE."""
  s2 = config.stage2
  return losses.make_objective('vae', reconstruction_loss=s2.reconstruction_loss, beta=s2.beta)


def train_kwargs(setup: experiment.Setup) -> Dict[str, Any]:
  """`train.train_stage`'s keyword arguments from the run-control keys."""
  c = setup.config
  return dict(mesh=setup.mesh, workdir=setup.workdir, experiment_fingerprint=setup.fingerprint,
              log_every_steps=c.log_every_steps,
              checkpoint_every_steps=c.checkpoint_every_steps,
              keep_checkpoints=c.keep_checkpoints, nan_policy=c.nan_policy,
              steps_per_call=steps_per_call(setup))


def steps_per_call(setup: experiment.Setup) -> int:
  """config.steps_per_call, 0 (auto) resolved for the mesh's platform (`train.auto_...`)."""
  c = setup.config
  requested = c.get('steps_per_call', 1)
  if requested:
    return requested
  return train.auto_steps_per_call(setup.mesh.devices.flat[0].platform, c.log_every_steps,
                                   c.checkpoint_every_steps)


def _device_data(setup: experiment.Setup, num_examples: int, example_bytes: int, load,
                 shuffle_seed: int) -> Optional[train.DeviceData]:
  """`train.DeviceData` when scanned steps run and each device's share of the split (it is
  sharded over the mesh) fits data.device_resident_max_mb.

  None keeps the host batches (stacked per call when steps_per_call > 1).
  """
  c = setup.config
  per_device_bytes = -(-num_examples // setup.mesh.size) * example_bytes
  budget_mb = c.data.get('device_resident_max_mb', 0)
  if steps_per_call(setup) == 1 or per_device_bytes > budget_mb * 2**20:
    return None
  return train.DeviceData(load=load, num_examples=num_examples, shuffle_seed=shuffle_seed)


def _stage1_device_data(setup: experiment.Setup) -> Optional[train.DeviceData]:
  """The uint8 training split on the devices: in-memory data sets without outlier noise."""
  c = setup.config
  if (c.dataset not in input_pipeline.IN_MEMORY_DATASETS
      or c.data.get('outlier_fraction', 0.0) > 0):  # The noise is added on the host (tf).
    return None
  builder = setup.builder
  num_train = input_pipeline.num_examples(builder, 'train')

  def load():
    return {'image': input_pipeline.training_images(builder, 'train', c.dataset)}

  return _device_data(setup, num_train, int(np.prod(setup.image_shape)), load, c.seed)


def stage1_spec(setup: experiment.Setup) -> train.StageSpec:
  """Stage 1: the image VAE on the training split."""
  c = setup.config
  builder = setup.builder
  steps = setup.steps_per_epoch(input_pipeline.num_examples(builder, 'train'))

  def epoch_batches(epoch, skip):
    return input_pipeline.as_numpy(input_pipeline.make_image_dataset(
        builder, 'train', dataset=c.dataset, global_batch_size=c.batch_size,
        shuffle_seed=c.seed, epoch=epoch, skip_batches=skip,
        shuffle_buffer=c.data.shuffle_buffer,
        outlier_fraction=c.data.get('outlier_fraction', 0.0),
        outlier_seed=c.data.get('outlier_seed', 0)))

  return train.StageSpec(
      name='stage1', model=setup.model1, config=c.stage1, prepare_input=train.image_input,
      example_input=_example_input(setup, 'stage1', c.batch_size // jax.process_count()),
      steps_per_epoch=steps, epoch_batches=epoch_batches,
      base_rng=setup.rng(experiment.Stream.STAGE1), examples_per_batch=c.batch_size,
      objective=stage1_objective(c), device_data=_stage1_device_data(setup))


def stage2_spec(setup: experiment.Setup) -> train.StageSpec:
  """Stage 2: the latent VAE on the stored (μ_z, σ_z) of the training split."""
  c = setup.config
  codes = input_pipeline.read_latent_dataset_builder(latents.latents_dir(setup.workdir))
  batch_size = config_lib.stage2_batch_size(c)
  steps = setup.steps_per_epoch(codes.num_examples, batch_size)

  def epoch_batches(epoch, skip):
    return input_pipeline.as_numpy(input_pipeline.make_latent_dataset(
        codes, global_batch_size=batch_size, shuffle_seed=c.seed + 1, epoch=epoch,
        skip_batches=skip))

  device_data = _device_data(
      setup, codes.num_examples, codes.latent_dim * 2 * 4,  # μ and σ, float32.
      lambda: codes.load(0, codes.num_examples), c.seed + 1)
  return train.StageSpec(
      name='stage2', model=setup.model2, config=c.stage2, prepare_input=train.latent_input,
      example_input=_example_input(setup, 'stage2', batch_size // jax.process_count()),
      steps_per_epoch=steps, epoch_batches=epoch_batches,
      base_rng=setup.rng(experiment.Stream.STAGE2), examples_per_batch=batch_size,
      objective=stage2_objective(c), device_data=device_data)


def _example_input(setup: experiment.Setup, stage: str, batch: int) -> np.ndarray:
  """Zeros shaped like one input batch of `stage` (for init; parameters don't depend on it)."""
  shape = setup.image_shape if stage == 'stage1' else (setup.config.latent_dim,)
  return np.zeros((batch,) + tuple(shape), np.float32)


def _completed_step(workdir: str, stage: str) -> Optional[int]:
  """The final step of a complete stage (its COMPLETE marker), else None."""
  marker = fileio.read_json(os.path.join(checkpointing.stage_dir(workdir, stage),
                                         checkpointing.COMPLETE_MARKER))
  return None if marker is None else int(marker['step'])


def train_or_restore(setup: experiment.Setup, spec: train.StageSpec) -> train.TrainState:
  """Trains the stage to completion (resuming it), or only restores it when it is complete."""
  done = _completed_step(setup.workdir, spec.name)
  if done is not None:
    logging.info('%s is complete (step %d); restoring it.', spec.name, done)
    return restore_final(setup, spec.name)
  state = train.train_stage(spec, **train_kwargs(setup))
  checkpointing.mark_complete(setup.workdir, spec.name, {'step': int(state.step)})
  return state


def restore_final(setup: experiment.Setup, stage: str) -> train.TrainState:
  """The final state of a complete stage, from its checkpoint alone (no data, no latents).

  Its parameters, BatchNorm statistics, optimizer state and step are those saved; the optimizer
  transformation attached to it is a stand-in (the state is for inference, not for training on).
  """
  if stage not in STAGES:
    raise ValueError(f'stage must be one of {STAGES}, got {stage!r}.')
  step = _completed_step(setup.workdir, stage)
  if step is None:
    raise checkpointing.CheckpointError(
        f'{stage} of {setup.workdir} is not complete; run tsvae.main on it first.')
  c = setup.config
  model = setup.model1 if stage == 'stage1' else setup.model2
  stream = experiment.Stream.STAGE1 if stage == 'stage1' else experiment.Stream.STAGE2
  # Adam's state has the same structure whatever the schedule: one step per epoch will do.
  tx = train.make_optimizer(train.lr_schedule(c[stage], 1))
  template = train.create_train_state(model, _example_input(setup, stage, 1),
                                      base_rng=setup.rng(stream), tx=tx)
  return train.restore_state(template, setup.workdir, stage, step, mesh=setup.mesh,
                             experiment_fingerprint=setup.fingerprint)
