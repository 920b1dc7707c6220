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
The grids are drawn by `tsvae.generation`; the stages are restored from their checkpoints alone.

`--output_dir=DIR` writes the grids to DIR instead. Writing into the workdir takes its lock
(`tsvae.workdir_lock`: exit 2 while another process writes it); writing elsewhere only reads the
workdir, so it runs beside a training or evaluation of it.
"""

import os

from absl import app
from absl import flags

from tsvae import cli
from tsvae import config_lib
from tsvae import experiment
from tsvae import generation
from tsvae import stages
from tsvae import workdir_lock


def write_grids(config, workdir: str, scales, out_dir: str = ''):
  """Writes the mean-vs-ancestral grid (and the noise-scale grid when `scales`); their paths."""
  if scales and not config.stage2.get('enabled', True):
    raise config_lib.ConfigError('--stage2_noise_scales needs a stage 2; this workdir is '
                                 'single-stage (config.stage2.enabled=False).')
  setup = experiment.setup(config, workdir)
  out_dir = out_dir or os.path.join(workdir, generation.SAMPLES_DIR)
  if workdir_lock.is_inside(out_dir, workdir):  # Only a writer takes the lock.
    workdir_lock.hold_until_exit(workdir, 'tsvae.sample')
  state2 = (stages.restore_final(setup, 'stage2') if config.stage2.get('enabled', True)
            else None)
  state1 = stages.restore_final(setup, 'stage1')
  paths = [generation.write_mean_vs_ancestral(setup, state1, state2, out_dir)]
  if scales:
    paths.append(generation.write_noise_scales(setup, state1, state2, scales, out_dir))
  return paths


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')

  def command():
    scales = generation.parse_noise_scales(flags.FLAGS.stage2_noise_scales)
    config = cli.workdir_config(flags.FLAGS)
    for path in write_grids(config, flags.FLAGS.workdir, scales, flags.FLAGS.output_dir):
      print(path)

  cli.run_command('tsvae.sample', command)


flags.DEFINE_string('output_dir', '', 'Where to write the grids (default <workdir>/samples). '
                    'Outside the workdir tsvae.sample only reads it: it takes no lock and runs '
                    'beside a training or evaluation of that workdir.')
flags.DEFINE_list('stage2_noise_scales', [], 'Also write samples/stage2_noise_scales.png: a '
                  'stage-2 grid per noise scale (e.g. 1,0.5,0), side by side.')

if __name__ == '__main__':
  cli.define_workdir_flags()
  app.run(main)
