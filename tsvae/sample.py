r"""Decoder mean vs ancestral sampling, side by side, from a finished workdir.

  python -m tsvae.sample --workdir=/tmp/tsvae_mnist [--config.sampling.num_grid_images=64]

Writes `<workdir>/samples/mean_vs_ancestral.png`: on the left Two-Stage VAE samples as the
decoder mean (the reference), on the right the same u and z with pixel noise (a single-stage
workdir, `stage2.enabled=False`, gives stage-1 samples from z ~ N(0, I) instead),
x ~ N(mean, γ_x² I) clipped to [0, 1]. With a small learned γ_x the two look alike; with a fixed
γ = 1 the right-hand side is mostly noise, which is why papers show means.
"""

import os

from absl import app
from absl import flags
import jax
import numpy as np

from tsvae import checkpointing
from tsvae import config_lib
from tsvae import evaluate
from tsvae import images
from tsvae import input_pipeline
from tsvae import sampling
from tsvae import train
from tsvae import two_stage


def write_mean_vs_ancestral(experiment, state1, state2=None) -> str:
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
  path = os.path.join(experiment.workdir, two_stage.SAMPLES_DIR, 'mean_vs_ancestral.png')
  if jax.process_index() == 0:
    images.save_png(path, images.side_by_side(grids))
  return path


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  try:
    from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
    overrides = config_flags.get_override_values(flags.FLAGS['config'])
    config = evaluate.resolve_config(flags.FLAGS.config, flags.FLAGS.workdir, overrides)
    experiment = two_stage.Experiment(config, flags.FLAGS.workdir)
    state2 = (experiment.restore_stage('stage2') if config.stage2.get('enabled', True)
              else None)
    path = write_mean_vs_ancestral(experiment, experiment.restore_stage('stage1'), state2)
    print(path)
  except (config_lib.ConfigError, input_pipeline.DataError,
          checkpointing.CheckpointError) as err:
    train.fail(f'tsvae.sample: {err}', 2)


if __name__ == '__main__':
  evaluate.define_flags()
  app.run(main)
