r"""Runs a Two-Stage VAE experiment: stage 1 → latents → stage 2 → samples.

  python -m tsvae.main --config=configs/mnist.py --workdir=/tmp/tsvae_mnist \
      --config.data.manual_dir=../shared/data/mnist

Rerunning the same command on the same workdir resumes the unfinished phase and skips the
finished ones. Exit status: 0 done, 2 bad input (config, data, workdir, checkpoint: nothing was
changed), 3 NaN/Inf during training, 75 stopped by SIGTERM after a checkpoint (rerun resumes).
"""

# Before JAX/TensorFlow start their threads (see hostmem): keeps XLA:CPU's per-step temp
# buffer mapped between steps. TSVAE_TUNE_MALLOC=0 turns it off.
from tsvae import hostmem  # pylint: disable=g-bad-import-order

_MALLOC = hostmem.tune_malloc_for_training()

from absl import app  # pylint: disable=g-import-not-at-top,wrong-import-position
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from tsvae import cli
from tsvae import metric_logging
from tsvae import pipeline

FLAGS = flags.FLAGS

config_flags.DEFINE_config_file(
    'config', None, 'Experiment configuration file (see configs/).', lock_config=True)
flags.DEFINE_string('workdir', None, 'Directory for checkpoints, latents, metrics and samples.')
flags.DEFINE_bool('distributed', False,
                  'Initialise jax.distributed (multi-host). Without the flags below JAX '
                  'detects the cluster itself (TPU pods, SLURM, Open MPI).')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0 (multi-host).')
flags.DEFINE_integer('num_processes', None, 'Number of processes (multi-host).')
flags.DEFINE_integer('process_id', None, 'This process (multi-host).')
flags.mark_flags_as_required(['config', 'workdir'])

BAD_INPUT_EXIT_CODE = cli.BAD_INPUT_EXIT_CODE
NON_FINITE_EXIT_CODE = cli.NON_FINITE_EXIT_CODE


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Too many command-line arguments: {argv[1:]}')
  metric_logging.quiet_library_logs()
  if FLAGS.distributed or FLAGS.coordinator_address:
    # CPU collectives across processes (only used by CPU devices; harmless elsewhere). Set
    # before anything initialises a backend.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=FLAGS.coordinator_address,
                               num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  logging.info(hostmem.describe(_MALLOC))
  logging.info('JAX %s: %d process(es), %d local / %d global devices (%s)', jax.__version__,
               jax.process_count(), jax.local_device_count(), jax.device_count(),
               jax.devices()[0].platform)
  cli.run_command('tsvae', lambda: pipeline.run(FLAGS.config, FLAGS.workdir))


if __name__ == '__main__':
  app.run(main)
