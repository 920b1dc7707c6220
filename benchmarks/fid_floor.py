r"""The FID floor: real training images vs real test images, under each FID protocol.

  python -m tsvae.evaluate --fetch_weights
  python benchmarks/fid_floor.py --dataset=mnist --manual_dir=../shared/data/mnist \
      --data_dir=/tmp/tfds --num=10000 --out=benchmarks/results/fid_floor_mnist.json

For each (preprocessing, compute dtype) in --runs it computes the FID of `--num` random
training images against `--num` random test images (the evaluation's seeded subsets). Both
sets' statistics go through the cache `tsvae.evaluate` uses (the test ones are the very
statistics an evaluation with eval.seed=0 compares against), so runs may be split over
processes and a last invocation with every run assembles the whole record from the cache. It then gives the distance between the
two protocols' statistics of the *same* test images (what mixing protocols would cost) and,
for bfloat16 runs, the change against float32 (the bar for using bf16: < 0.1). The JSON is
rewritten after every run, with the commit, machine, timings and load.
"""

import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

from tsvae import hostmem  # pylint: disable=g-import-not-at-top,wrong-import-position,g-bad-import-order

hostmem.tune_malloc_for_training()

from absl import logging  # pylint: disable=g-import-not-at-top,wrong-import-position

logging.set_verbosity(logging.INFO)  # The extractor's progress lines.

import step_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position
from tsvae.evaluators import inputs as eval_inputs  # pylint: disable=g-import-not-at-top,wrong-import-position
from tsvae import input_pipeline  # pylint: disable=g-import-not-at-top,wrong-import-position
from tsvae.metrics import fid  # pylint: disable=g-import-not-at-top,wrong-import-position
from tsvae.metrics import frechet  # pylint: disable=g-import-not-at-top,wrong-import-position
from tsvae.metrics import inception  # pylint: disable=g-import-not-at-top,wrong-import-position
from tsvae.metrics import inception_weights  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--dataset', default='mnist')
  p.add_argument('--manual_dir', default='')
  p.add_argument('--data_dir', default='')
  p.add_argument('--cache_dir', default='')
  p.add_argument('--num', type=int, default=10_000)
  p.add_argument('--seed', type=int, default=0, help='of the random subsets (eval.seed)')
  p.add_argument('--batch_size', type=int, default=10, help='Inception batch')
  p.add_argument('--runs', default='tf_graph:float32,tf_graph:bfloat16,pytorch_fid:float32',
                 help='comma-separated preprocessing:dtype pairs, run in this order')
  p.add_argument('--out', default='')
  return p.parse_args(argv)


def subset(builder, dataset, split, num, seed):
  ds = input_pipeline.make_eval_dataset(builder, split, dataset, 500, as_uint8=True,
                                        num_examples=num, seed=seed)
  return np.concatenate([b['image'] for b in ds.as_numpy_iterator()])


def main(argv=None):
  args = parse_args(argv)
  cache_dir = args.cache_dir or eval_inputs.default_cache_dir()
  weights, reason = inception_weights.find('', cache_dir, allow_download=True)
  if weights is None:
    sys.exit(reason)
  variables = inception_weights.load_variables(weights)
  builder = input_pipeline.get_builder(args.dataset, data_dir=args.data_dir or None,
                                       manual_dir=args.manual_dir or None)
  test = fid.RealSet(subset(builder, args.dataset, 'test', args.num, args.seed), args.dataset,
                     'test', args.seed)
  train = fid.RealSet(subset(builder, args.dataset, 'train', args.num, args.seed),
                      args.dataset, 'train', args.seed)
  record = {
      'benchmark': 'fid_floor', 'dataset': args.dataset, 'num': len(test.images_uint8),
      'subset_seed': args.seed, 'runs': {}, 'config': vars(args),
      'weights': weights.describe(), 'weights_sha256': weights.sha256,
      'machine': step_throughput.machine_info(), 'commit': step_throughput.git_commit(),
      'versions': step_throughput.versions(),
  }
  test_stats = {}
  for run in args.runs.split(','):
    preprocessing, dtype = run.split(':')
    extractor = inception.FeatureExtractor(variables, args.batch_size,
                                           preprocessing=preprocessing, compute_dtype=dtype)
    t = time.time()
    test_stats[run] = fid.real_stats(cache_dir, test, extractor, weights.sha256, write=True)
    t_test = time.time() - t
    t = time.time()
    train_stats = fid.real_stats(cache_dir, train, extractor, weights.sha256, write=True)
    t_train = time.time() - t
    value = frechet.frechet_distance_from_stats(train_stats, test_stats[run])
    record['runs'][run] = {
        'fid_train_vs_test': value, 'preprocessing': preprocessing, 'compute_dtype': dtype,
        'test_stats_seconds': round(t_test, 1), 'train_features_seconds': round(t_train, 1),
        'train_images_per_s': round(len(train.images_uint8) / t_train, 2),
        'loadavg_1m_after': os.getloadavg()[0],
        'time': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}
    print(f'{run}: FID train vs test {value:.3f} (train statistics in {t_train:.0f} s)',
          flush=True)
    f32 = f'{preprocessing}:float32'
    if dtype != 'float32' and f32 in record['runs']:
      record['runs'][run]['change_vs_float32'] = value - record['runs'][f32]['fid_train_vs_test']
    pairs = [(a, b) for a in test_stats for b in test_stats
             if a < b and a.split(':')[0] != b.split(':')[0]]
    record['across_protocols_same_test_images'] = {
        f'{a} vs {b}': frechet.frechet_distance_from_stats(test_stats[a], test_stats[b])
        for a, b in pairs}
    step_throughput.write_record(record, args.out)


if __name__ == '__main__':
  main()
