r"""Trains (or loads from the cache) the proxy-FD classifier of a dataset; records accuracy, time.

  python benchmarks/proxy_classifier.py --dataset=mnist \
      --manual_dir=../shared/data/mnist --data_dir=/tmp/tfds --cache_dir=/tmp/tsvae_cache \
      --out=benchmarks/results/proxy_classifier_mnist.json

The JSON holds the machine, the commit, the recipe, the test accuracy and the training time.
Accuracy bars of the project: MNIST >= 0.99, Fashion-MNIST >= 0.91, CIFAR-10 (JPEG q75) >= 0.80.
"""

import json
import os
import platform
import sys
import time

from absl import app
from absl import flags
from absl import logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Before JAX/TensorFlow start their threads: XLA:CPU's per-step temp buffers stay mapped
# (tsvae/hostmem.py; TSVAE_TUNE_MALLOC=0 turns it off).
from tsvae import hostmem  # pylint: disable=g-import-not-at-top,wrong-import-position,g-bad-import-order

_MALLOC = hostmem.tune_malloc_for_training()


from tsvae import fileio  # pylint: disable=g-import-not-at-top,wrong-import-position
from tsvae import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from tsvae.metrics import classifier  # pylint: disable=g-import-not-at-top,wrong-import-position
import step_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position  (git_commit; this folder is on sys.path)

flags.DEFINE_string('dataset', 'mnist', 'mnist | fashion_mnist | cifar10')
flags.DEFINE_string('manual_dir', '', 'Local copies of the data (tsvae.datasets).')
flags.DEFINE_string('data_dir', '', 'tfds data_dir.')
flags.DEFINE_string('cache_dir', os.path.expanduser('~/.cache/tsvae'), 'Classifier cache root.')
flags.DEFINE_integer('epochs', -1, '> 0 overrides the recipe.')
flags.DEFINE_integer('seed', 0, 'Classifier seed.')
flags.DEFINE_string('out', '', 'JSON result path ('' = print only).')
FLAGS = flags.FLAGS

BARS = {'mnist': 0.99, 'fashion_mnist': 0.91, 'cifar10': 0.80}


def main(argv):
  del argv
  import jax  # pylint: disable=g-import-not-at-top
  builder = input_pipeline.get_builder(FLAGS.dataset, data_dir=FLAGS.data_dir or None,
                                       manual_dir=FLAGS.manual_dir or None)
  start = time.time()
  clf = classifier.get_classifier(builder, FLAGS.dataset, cache_dir=FLAGS.cache_dir,
                                  seed=FLAGS.seed, epochs=FLAGS.epochs)
  wall = time.time() - start
  result = {
      'dataset': FLAGS.dataset,
      'label': 'CIFAR-10 (JPEG q75)' if FLAGS.dataset == 'cifar10' else FLAGS.dataset,
      'test_accuracy': clf.test_accuracy,
      'train_accuracy': clf.meta.get('train_accuracy'),
      'accuracy_bar': BARS.get(FLAGS.dataset),
      'meets_bar': clf.test_accuracy >= BARS.get(FLAGS.dataset, 0.0),
      'train_time_s': clf.meta.get('train_time_s'),
      'resumed_at_epoch': clf.meta.get('resumed_at_epoch', 0),
      'training_started': clf.meta.get('training_started'),
      'wall_time_s_this_call': round(wall, 1),
      'recipe': clf.recipe.to_json(),
      'cache_key': clf.cache_key,
      'commit': step_throughput.git_commit()['commit'],
      'machine': {'platform': platform.platform(), 'processor': platform.processor(),
                  'cpu_count': os.cpu_count(), 'jax_backend': jax.default_backend(),
                  'jax_devices': [str(d) for d in jax.devices()], 'jax': jax.__version__},
      'load_average_1_5_15min_at_end': list(os.getloadavg()),
      'malloc_tuned': _MALLOC['applied'],
      'date': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
  }
  text = json.dumps(result, indent=2, sort_keys=True)
  print(text)
  if FLAGS.out:
    fileio.atomic_write_json(FLAGS.out, result)
    logging.info('Wrote %s', FLAGS.out)


if __name__ == '__main__':
  app.run(main)
