"""FID as the paper computes it: Inception pool3 statistics of generated vs real images.

`fid_scores` scores every generated set against one real set. The real set's statistics are
cached per (dataset, split, subset, preprocessing, compute dtype, weights digest) and the
images' bytes, so they are computed once for all the sets and all later evaluations, and
statistics of one protocol are never compared with those of another.
"""

import dataclasses
import hashlib
import io
import os
import time
from typing import Any, Dict, Mapping, Optional

from absl import logging
import numpy as np

from tsvae import config_lib
from tsvae import fileio
from tsvae.metrics import frechet
from tsvae.metrics import inception
from tsvae.metrics import inception_weights


def validate_config(config):
  """Checks the metrics' keys of `config` (config.eval: the ex-post GMM and the FID protocol);
  raises config_lib.ConfigError. (tsvae.validation runs these with every other check.)"""
  validate_expost_gmm_config(config)
  validate_fid_config(config)


def validate_expost_gmm_config(config):
  components = config.eval.get('expost_gmm_components', 0)
  if not isinstance(components, int) or isinstance(components, bool) or components < 0:
    raise config_lib.ConfigError('config.eval.expost_gmm_components must be a non-negative '
                                 f'integer (0 = no ex-post GMM), got {components!r}.')


def validate_fid_config(config):
  config_lib.check_choice(config.eval.get('fid_preprocess', 'tf_graph'),
                          inception.PREPROCESSINGS, 'eval.fid_preprocess')
  config_lib.check_choice(config.eval.get('inception_compute_dtype', 'float32'),
                          tuple(inception.COMPUTE_DTYPES), 'eval.inception_compute_dtype')
  config_lib.check_positive(config, ['eval.inception_batch_size'])


@dataclasses.dataclass(frozen=True)
class RealSet:
  """The real images every set is compared with, and what names them in the cache."""
  images_uint8: np.ndarray
  dataset: str
  split: str
  seed: int  # Of the random subset.


def _stats_path(cache_dir: str, real: RealSet, extractor: inception.FeatureExtractor,
                weights_sha256: str) -> str:
  content = hashlib.sha256(str(real.images_uint8.shape).encode())
  content.update(np.ascontiguousarray(real.images_uint8).tobytes())
  name = (f'{real.dataset}_{real.split}_n{len(real.images_uint8)}_seed{real.seed}_'
          f'{extractor.preprocessing}_{extractor.compute_dtype}_w{weights_sha256[:12]}_'
          f'{content.hexdigest()[:12]}.npz')
  return os.path.join(cache_dir, 'fid_stats', name)


def real_stats(cache_dir: str, real: RealSet, extractor: inception.FeatureExtractor,
               weights_sha256: str, write: bool) -> frechet.GaussianStats:
  """Statistics of the real set, from the cache when they are there."""
  path = _stats_path(cache_dir, real, extractor, weights_sha256)
  if os.path.exists(path):
    try:
      with np.load(path) as f:
        return frechet.GaussianStats(f['mu'], f['sigma'], int(f['num']))
    except (OSError, ValueError, KeyError):
      logging.warning('Unreadable %s; computing the statistics again.', path)
  stats = frechet.gaussian_stats(extractor(real.images_uint8.astype(np.float32) / 255.0))
  if write:
    buffer = io.BytesIO()
    np.savez(buffer, mu=stats.mu, sigma=stats.sigma, num=stats.num)
    fileio.atomic_write_bytes(path, buffer.getvalue())
  return stats


def protocol(eval_config) -> Dict[str, Any]:
  """The FID settings of `config.eval` (old workdirs lack the newer keys)."""
  return {'fid_preprocess': eval_config.get('fid_preprocess', 'tf_graph'),
          'inception_compute_dtype': eval_config.get('inception_compute_dtype', 'float32'),
          'inception_batch_size': int(eval_config.get('inception_batch_size', 10))}


def fid_scores(generated: Mapping[str, np.ndarray], real: RealSet, eval_config,
               cache_dir: str, write: bool,
               floor: Optional[RealSet] = None) -> Dict[str, Any]:
  """{'fids': {set: FID or None}, 'reason': why None or None, plus the protocol's record}.

  `generated`: float images in [0, 1] per set name. `floor`: real images of another split,
  scored as 'train' (their statistics cached like the test set's). The weights are found (and
  fetched when config.eval.allow_download) by `inception_weights.find`.
  """
  settings = protocol(eval_config)
  record: Dict[str, Any] = dict(settings, inception_weights=None,
                                inception_weights_sha256=None, fid_seconds=None)
  weights, reason = inception_weights.find(
      eval_config.get('inception_weights', ''), cache_dir,
      allow_download=bool(eval_config.get('allow_download', True)))
  names = list(generated) + (['train'] if floor is not None else [])
  fids: Dict[str, Optional[float]] = {name: None for name in names}
  if weights is None:
    return dict(record, fids=fids, reason=reason)
  record.update(inception_weights=weights.describe(), inception_weights_sha256=weights.sha256)
  t = time.time()
  try:
    extractor = inception.FeatureExtractor(
        inception_weights.load_variables(weights), settings['inception_batch_size'],
        preprocessing=settings['fid_preprocess'],
        compute_dtype=settings['inception_compute_dtype'])
    reference = real_stats(cache_dir, real, extractor, weights.sha256, write)
    for name, images in generated.items():
      t_set = time.time()
      fids[name] = frechet.frechet_distance_from_stats(
          frechet.gaussian_stats(extractor(images)), reference)
      logging.info('FID %s: %.3f (%d images, %.0f s)', name, fids[name], len(images),
                   time.time() - t_set)
    if floor is not None:
      fids['train'] = frechet.frechet_distance_from_stats(
          real_stats(cache_dir, floor, extractor, weights.sha256, write), reference)
  except Exception as err:  # pylint: disable=broad-except
    logging.exception('FID failed.')
    return dict(record, fids={name: None for name in names},
                reason=f'FID computation failed: {type(err).__name__}: {err}')
  record['fid_seconds'] = time.time() - t
  return dict(record, fids=fids, reason=None)
