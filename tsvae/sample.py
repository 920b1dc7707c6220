r"""Decoder mean vs ancestral sampling, side by side, from a finished workdir.

  python -m tsvae.sample --workdir=/tmp/tsvae_mnist [--config.sampling.num_grid_images=64] \
      [--stage2_noise_scales=1,0.5,0]

Writes `<workdir>/samples/mean_vs_ancestral.png`: on the left Two-Stage VAE samples as the
decoder mean (the reference), on the right the same u and z with pixel noise (a single-stage
workdir, `stage2.enabled=False`, gives stage-1 samples from z ~ N(0, I) instead),
x ~ N(mean, γ_x² I) clipped to [0, 1]. With a small learned γ_x the two look alike; with a fixed
γ = 1 the right-hand side is mostly noise, which is why papers show means.

With `--stage2_noise_scales` it also writes `<workdir>/samples/stage2_noise_scales.png`: one
stage-2 grid per scale s, left to right, of z = ẑ(u) + s·γ_z·ε with the same u and ε
(`config.sampling.stage2_noise_scale`; 1 = the reference, 0 = the stage-2 decoder mean).

`--output_dir=DIR` writes the grids to DIR instead. Writing into the workdir takes its lock
(`tsvae.workdir_lock`: exit 2 while another process writes it); writing elsewhere only reads the
workdir, so it runs beside a training or evaluation of it.
"""

import os
from typing import Sequence

from absl import app
from absl import flags
import jax
import numpy as np

from tsvae import checkpointing
from tsvae import cli
from tsvae import config_lib
from tsvae import evaluate
from tsvae import images
from tsvae import input_pipeline
from tsvae import sampling
from tsvae import train
from tsvae import two_stage
from tsvae import workdir_lock


def write_mean_vs_ancestral(experiment, state1, state2=None, out_dir=None) -> str:
  """The side-by-side grid; `state2` None = a single-stage model (stage-1 prior samples)."""
  c = experiment.config
  n = c.sampling.num_grid_images
  v1 = sampling.variables_of(state1)
  rng = jax.random.fold_in(experiment.root_rng, 4)

  def generate(noise):
    if state2 is None:
      return sampling.generate_stage1(experiment.model1, v1, rng, n, latent_dim=c.latent_dim,
                                      pixel_noise=noise)
    return sampling.generate_stage2(experiment.model1, v1, experiment.model2,
                                    sampling.variables_of(state2), rng, n, pixel_noise=noise)

  grids = [images.make_grid(generate(noise), int(np.ceil(np.sqrt(n)))) for noise in (False, True)]
  path = os.path.join(out_dir or os.path.join(experiment.workdir, two_stage.SAMPLES_DIR),
                      'mean_vs_ancestral.png')
  if jax.process_index() == 0:
    images.save_png(path, images.side_by_side(grids))
  return path


def parse_noise_scales(values: Sequence[str]) -> list:
  """--stage2_noise_scales as floats; ConfigError unless each is a finite number >= 0."""
  try:
    scales = [float(v) for v in values]
  except ValueError:
    scales = None
  if scales is None or any(not np.isfinite(s) or s < 0 for s in scales):
    raise config_lib.ConfigError('--stage2_noise_scales takes finite numbers >= 0 (e.g. '
                                 f'1,0.5,0), got {",".join(values)!r}.')
  return scales


def write_noise_scales(experiment, state1, state2, scales: Sequence[float],
                       out_dir=None) -> str:
  """Stage-2 grids at each noise scale in `scales`, side by side (same u and ε)."""
  if not scales:
    raise config_lib.ConfigError('write_noise_scales needs at least one noise scale.')
  parse_noise_scales([str(s) for s in scales])
  c = experiment.config
  n = c.sampling.num_grid_images
  v1, v2 = sampling.variables_of(state1), sampling.variables_of(state2)
  rng = jax.random.fold_in(experiment.root_rng, 5)
  grids = [images.make_grid(sampling.generate_stage2(
      experiment.model1, v1, experiment.model2, v2, rng, n, pixel_noise=c.sampling.pixel_noise,
      noise_scale=scale), int(np.ceil(np.sqrt(n)))) for scale in scales]
  path = os.path.join(out_dir or os.path.join(experiment.workdir, two_stage.SAMPLES_DIR),
                      'stage2_noise_scales.png')
  if jax.process_index() == 0:
    images.save_png(path, images.side_by_side(grids))
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  try:
    scales = parse_noise_scales(flags.FLAGS.stage2_noise_scales)
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    overrides = config_flags.get_override_values(flags.FLAGS['config'])
    config = evaluate.resolve_config(flags.FLAGS.config, flags.FLAGS.workdir, overrides)
    if scales and not config.stage2.get('enabled', True):
      raise config_lib.ConfigError('--stage2_noise_scales needs a stage 2; this workdir is '
                                   'single-stage (config.stage2.enabled=False).')
    experiment = two_stage.Experiment(config, flags.FLAGS.workdir)
    out_dir = flags.FLAGS.output_dir or os.path.join(flags.FLAGS.workdir, two_stage.SAMPLES_DIR)
    if workdir_lock.is_inside(out_dir, flags.FLAGS.workdir):  # Only a writer takes the lock.
      workdir_lock.hold_until_exit(flags.FLAGS.workdir, 'tsvae.sample')
    state2 = (experiment.restore_stage('stage2') if config.stage2.get('enabled', True)
              else None)
    state1 = experiment.restore_stage('stage1')
    print(write_mean_vs_ancestral(experiment, state1, state2, out_dir))
    if scales:
      print(write_noise_scales(experiment, state1, state2, scales, out_dir))
  except (config_lib.ConfigError, input_pipeline.DataError,
          checkpointing.CheckpointError) as err:
    cli.fail(f'tsvae.sample: {err}', 2)


flags.DEFINE_string('output_dir', '', 'Where to write the grids (default <workdir>/samples). '
                    'Outside the workdir tsvae.sample only reads it: it takes no lock and runs '
                    'beside a training or evaluation of that workdir.')
flags.DEFINE_list('stage2_noise_scales', [], 'Also write samples/stage2_noise_scales.png: a '
                  'stage-2 grid per noise scale (e.g. 1,0.5,0), side by side.')

if __name__ == '__main__':
  evaluate.define_flags()
  app.run(main)
