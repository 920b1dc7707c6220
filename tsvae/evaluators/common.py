"""What every evaluator shares: the inputs it receives, how it reports, and the driver.

An evaluator is a function `(inputs: EvalInputs) → iterator of (key, value)`. A value is a
number or JSON-able record for metrics.json; `Unavailable(reason)` when the metric cannot be
computed (metrics.json then holds null and `null_reasons[key]` the reason); or a `Plot` (a PNG
under <workdir>/eval/, listed in metrics.json's `plots`). Evaluators receive only what they need
to read (models, variables, codes, images, config) and never write: `run_evaluators` does.
"""

import dataclasses
import os
import time
from typing import Any, Callable, Dict, Iterator, Mapping, Optional, Sequence, Tuple

from absl import logging
import jax
import numpy as np

from tsvae import faults
from tsvae import fileio

EVAL_DIR = 'eval'
METRICS_FILE = 'metrics.json'
# The generated image sets, each compared with the test images by proxy FD and FID.
SAMPLE_SETS = ('stage2', 'stage1', 'recon', 'gmm')


@dataclasses.dataclass(frozen=True)
class Unavailable:
  """A metric that could not be computed, and why (null in metrics.json)."""
  reason: str


@dataclasses.dataclass(frozen=True)
class Plot:
  """A picture: `draw(path)` writes it as `filename` under <workdir>/eval/."""
  filename: str
  draw: Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class EvalInputs:
  """Everything the evaluators read (built once by `tsvae.evaluators.inputs.gather`).

  Attributes:
    config: the run's config (its `eval` block sets the protocol).
    model1, variables1: the stage-1 model and its host variables.
    model2, variables2: the stage-2 model and its variables (None without a stage 2).
    stage2_reason: why there is no stage 2 (None when there is one).
    mu, sigma: the stage-1 (μ_z, σ_z) of the whole training split.
    test_uint8, train_uint8: the random real test images the sets are compared with, and as
      many real training images (the metrics' floor).
    generated: float images in [0, 1] per sample set (of SAMPLE_SETS) that exists.
    missing: {sample set: why it was not generated}.
    gmm: the fitted ex-post GMM (`tsvae.metrics.expost_gmm`), None when there is none.
    gmm_grid: ex-post GMM samples for samples_gmm.png (None without the GMM).
    num_requested: config.eval.num_samples (the sets hold fewer when the test split is smaller).
    stage1_step, stage2_step: the restored stages' steps (stage2_step None without a stage 2).
    builder: the image data set builder (the proxy classifier trains on its splits).
    rng_codes, rng_u: keys of the codes' noise (mmd_z) and of u ~ q(u|z) (mmd_u).
    cache_dir: where classifiers, Inception weights and real statistics are cached.
    write: whether this process writes (caches, files).
  """
  config: Any
  model1: Any
  variables1: Any
  model2: Any
  variables2: Optional[Any]
  stage2_reason: Optional[str]
  mu: np.ndarray
  sigma: np.ndarray
  test_uint8: np.ndarray
  train_uint8: np.ndarray
  generated: Mapping[str, np.ndarray]
  missing: Mapping[str, str]
  gmm: Optional[Any]
  gmm_grid: Optional[np.ndarray]
  num_requested: int
  stage1_step: int
  stage2_step: Optional[int]
  builder: Any
  rng_codes: jax.Array
  rng_u: jax.Array
  cache_dir: str
  write: bool

  @property
  def seed(self) -> int:
    return int(self.config.eval.get('seed', 0))

  @property
  def batch_size(self) -> int:
    return int(self.config.eval.batch_size)

  @property
  def num_samples(self) -> int:
    return len(self.test_uint8)


Evaluator = Callable[[EvalInputs], Iterator[Tuple[str, Any]]]


def run_evaluators(evaluators: Sequence[Tuple[str, Evaluator]], inputs: EvalInputs,
                   out_dir: str, metrics: Dict[str, Any], started: float) -> Dict[str, Any]:
  """Runs each (name, evaluator) in order into `metrics`; writes the plots and metrics.json.

  `metrics` arrives with what was known before (`timings_s` so far); `started`: the
  evaluation's start time (for timings_s.total).
  """
  reasons: Dict[str, str] = dict(metrics.pop('null_reasons', {}))
  plots: Dict[str, Plot] = {}
  timings = metrics.setdefault('timings_s', {})
  for name, evaluator in evaluators:
    start = time.time()
    for key, value in evaluator(inputs):
      if isinstance(value, Unavailable):
        metrics[key], reasons[key] = None, value.reason
      elif isinstance(value, Plot):
        plots[key] = value
      else:
        metrics[key] = value
    timings[name] = round(time.time() - start, 2)
  timings['total'] = round(time.time() - started, 2)
  metrics['plots'] = {key: plot.filename for key, plot in plots.items()}
  metrics['null_reasons'] = reasons
  metrics['created'] = time.strftime('%Y-%m-%dT%H:%M:%S%z')
  if inputs.write:
    faults.kill_here('eval.write')  # Fault-injection point (tests/faults_test.py).
    for plot in plots.values():
      plot.draw(os.path.join(out_dir, plot.filename))
    fileio.atomic_write_json(os.path.join(out_dir, METRICS_FILE), metrics)  # The record: last.
    logging.info('Wrote %s', os.path.join(out_dir, METRICS_FILE))
  return metrics


def log_summary(m: Mapping[str, Any]):
  """The evaluation's headline numbers, and every null metric with its reason, in the log."""
  def fmt(key, spec='.3f'):
    return 'n/a' if m.get(key) is None else format(m[key], spec)
  fid_reason = m.get('fid_unavailable_reason')
  logging.info('Evaluation (%d vs %d test images): proxy FD stage2 %s, stage1 %s, recon %s, '
               'GMM %s (classifier accuracy %s); FID stage2 %s%s; active dims %s; MMD² z %s, '
               'u %s; log γ_x %s, log γ_z %s', m['num_samples'], m['num_samples'],
               fmt('proxy_fd_stage2'), fmt('proxy_fd_stage1'), fmt('proxy_fd_recon'),
               fmt('proxy_fd_gmm'), fmt('classifier_test_accuracy'), fmt('fid_stage2'),
               f' ({fid_reason})' if fid_reason else '', fmt('active_dims', 'd'),
               fmt('mmd_z', '.4f'), fmt('mmd_u', '.4f'), fmt('loggamma_x'), fmt('loggamma_z'))
  for key, reason in m['null_reasons'].items():
    logging.info('  %s is null: %s', key, reason)
