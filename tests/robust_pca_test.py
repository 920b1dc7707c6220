"""benchmarks/robust_pca.py end to end in its --quick mode on a synthetic MNIST folder."""

import json
import math
import os
import sys

import numpy as np

from testdata import write_mnist_dir

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'benchmarks'))
import robust_pca  # pylint: disable=g-import-not-at-top,wrong-import-position


def _refuse_constant(name):
  raise ValueError(f'not strict JSON: {name}')


def test_quick_run_writes_finite_json_and_png(tmp_path):
  manual = str(tmp_path / 'mnist')
  write_mnist_dir(manual, n_train=96, n_test=40)
  out = tmp_path / 'results' / 'robust_pca.json'
  robust_pca.main(['--quick', '--epochs=1', '--outlier_fraction=0.2', f'--manual_dir={manual}',
                   f'--data_dir={tmp_path / "tfds"}', f'--workdir={tmp_path / "run"}',
                   f'--out={out}', '--batch_size=64'])
  record = json.loads(out.read_text(), parse_constant=_refuse_constant)
  assert record['config']['outlier_pixels_per_image'] == 157
  assert record['stage1_steps_trained'] == 3 and math.isfinite(record['loggamma_x'])
  assert record['git']['commit'] and record['machine']['cpu_count'] >= 1
  methods = ('corrupted_input', 'pca', 'pca_clipped', 'vae', 'pca_fit_on_clean_reference')
  for split, n in (('train', 96), ('test', 40)):
    result = record['results'][split]
    assert result['num_images'] == n
    for method in methods:
      for key, value in result[method].items():
        assert math.isfinite(value) and value >= 0, (split, method, key)
    # The do-nothing reference measures the outlier model itself: clean pixels untouched,
    # Uniform noise over uniformly random grey levels: E (U - X)^2 = 1/6.
    nothing = result['corrupted_input']
    assert nothing['mse_vs_clean_other_pixels'] == 0.0 and nothing['mse_vs_corrupted'] == 0.0
    assert abs(nothing['mse_vs_clean_outlier_pixels'] - 1 / 6) < 0.01
    np.testing.assert_allclose(nothing['mse_vs_clean'],
                               157 / 784 * nothing['mse_vs_clean_outlier_pixels'], rtol=1e-9)
    assert result['pca_clipped']['mse_vs_clean'] <= result['pca']['mse_vs_clean']
  png = out.parent / record['png']
  assert png.read_bytes()[:4] == b'\x89PNG' and png.stat().st_size < 100_000
