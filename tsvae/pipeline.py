"""The whole Two-Stage VAE run, in the order it happens:

  setup → train stage 1 → extract latents → train stage 2 → write sample grids → evaluate

With ``config.stage2.enabled=False`` (the single-stage baselines) the run is stage 1 → the
stage-1 sample and reconstruction grids: no latents, no stage 2, no stage-2 grid.

Each phase leaves a durable record in the workdir and is skipped when a rerun finds it:

  <workdir>/config.json              the experiment this workdir holds (checked on every run)
  <workdir>/stage1/checkpoints/<n>   Orbax checkpoints;  <workdir>/stage1/COMPLETE when done
  <workdir>/latents/                 (μ_z, σ_z) of the training split as a tfds dataset
  <workdir>/stage2/...               as stage 1
  <workdir>/samples/*.png            stage-2 samples, stage-1 (prior) samples, reconstructions
  <workdir>/eval/                    metrics.json and the diagnostic plots (config.eval.enabled)
  <workdir>/metrics.jsonl, tensorboard/

An unfinished stage resumes from its latest checkpoint.
"""

from typing import Any, Dict, Optional, Sequence

from absl import logging
import jax

from tsvae import config_lib
from tsvae import evaluators
from tsvae import experiment
from tsvae import generation
from tsvae import input_pipeline
from tsvae import latents
from tsvae import stages
from tsvae import train
from tsvae import workdir_lock


def plan(setup: experiment.Setup) -> str:
  """One line: the steps each stage will train (before any of them runs)."""
  c = setup.config
  num_train = input_pipeline.num_examples(setup.builder, 'train')
  parts = []
  for name, stage, batch in (('stage 1', c.stage1, c.batch_size),
                             ('stage 2', c.stage2, config_lib.stage2_batch_size(c))):
    if name == 'stage 2' and not c.stage2.enabled:
      parts.append('stage 2 off')
      continue
    per_epoch = setup.steps_per_epoch(num_train, batch)
    steps = train.total_steps(stage, per_epoch)
    capped = ' (max_steps cap)' if steps < stage.num_epochs * per_epoch else ''
    parts.append(f'{name} {steps} steps{capped} ({stage.num_epochs} epochs x {per_epoch} '
                 f'steps of batch {batch})')
  evaluation = (f'evaluation of {c.eval.num_samples} samples' if c.eval.enabled
                else 'no evaluation')
  k = stages.steps_per_call(setup)
  calls = 'one step per call' if k == 1 else f'up to {k} scanned steps per call'
  return (f'Plan for {setup.workdir}: ' + ', '.join(parts) + f', then {evaluation}; {calls} '
          f'on {setup.mesh.size} {setup.mesh.devices.flat[0].platform} device(s).')


def run(config, workdir: str, devices: Optional[Sequence[jax.Device]] = None) -> Dict[str, Any]:
  """Validates, then runs (or resumes) the whole experiment in `workdir`, holding its lock.

  Returns {'state1', 'state2' (None without a stage 2), 'samples': {grid: path}, and 'eval':
  the metrics when config.eval.enabled}.
  """
  # ------------------------------------------------------------------ setup
  setup = experiment.setup(config, workdir, devices)  # Bad input fails here, before any write.
  with workdir_lock.hold(workdir, 'tsvae.main'):
    # Checked again: another writer may have recorded its config since setup checked.
    config_lib.check_workdir(config, workdir)
    if jax.process_index() == 0:
      config_lib.record_config(config, workdir)
    logging.info('%s', plan(setup))
    # ---------------------------------------------------------------- stage 1
    state1 = stages.train_or_restore(setup, stages.stage1_spec(setup))
    # ---------------------------------------------------------------- latents, stage 2
    state2 = None
    if config.stage2.enabled:
      latents.extract(setup, generation.variables_of(state1))
      state2 = stages.train_or_restore(setup, stages.stage2_spec(setup))
    else:
      logging.info('stage2.enabled=False: no latent extraction, no stage 2.')
    # ---------------------------------------------------------------- sample grids
    result = {'state1': state1, 'state2': state2,
              'samples': generation.write_run_grids(setup, state1, state2)}
    # ---------------------------------------------------------------- evaluation
    if config.eval.enabled:  # state2 None: the evaluation's single-stage mode.
      result['eval'] = evaluators.evaluate(setup, state1, state2)
    return result
