"""The evaluation of a trained run: each metric family is an evaluator (see `common`).

  record              the run's record: data set, sample counts, protocol, steps, GMM
  proxy_fd            proxy FD of every sample set (the project's classifier)
  fid                 FID of every sample set (the paper's protocol)
  latent_diagnostics  active dims, MMD² and singular values of z and u, latent sweep, γ's,
                      the GMM's samples, and the latent map of a κ = 2 model
  rate_distortion     rate (KL) and distortion (MSE) on the test images; for the β-conditioned
                      VAE at every β of eval.beta_values

`evaluate(setup, state1, state2)` gathers their inputs once (`inputs.gather`), runs them in
order and writes <workdir>/eval/metrics.json and the plots (process 0).
"""

import os
import time
from typing import Any, Dict

from tsvae import experiment
from tsvae.evaluators import common
from tsvae.evaluators import fid
from tsvae.evaluators import inputs as inputs_lib
from tsvae.evaluators import latent_diagnostics
from tsvae.evaluators import proxy_fd
from tsvae.evaluators import rate_distortion
from tsvae.evaluators import record

# (timing name, evaluator), in the order they run.
EVALUATORS = (
    ('record', record.run_record),
    ('proxy_fd', proxy_fd.proxy_fd),
    ('fid', fid.fid),
    ('active_dims', latent_diagnostics.active_dims),
    ('latent_match', latent_diagnostics.latent_match),
    ('latent_sweep', latent_diagnostics.latent_sweep),
    ('gmm_samples', latent_diagnostics.gmm_samples),
    ('latent_map', latent_diagnostics.latent_map),
    ('rate_distortion', rate_distortion.rate_distortion_evaluator),
)


def evaluate(setup: experiment.Setup, state1, state2=None) -> Dict[str, Any]:
  """Evaluates the trained stages; writes <workdir>/eval/ (process 0); the metrics.

  `state2` None (or config.stage2.enabled=False): a single-stage run; the stage-2 metrics are
  null and `null_reasons` says why.
  """
  start = time.time()
  inputs, timings = inputs_lib.gather(setup, state1, state2)
  metrics: Dict[str, Any] = {'timings_s': {k: round(v, 2) for k, v in timings.items()}}
  metrics = common.run_evaluators(EVALUATORS, inputs,
                                  os.path.join(setup.workdir, common.EVAL_DIR), metrics, start)
  common.log_summary(metrics)
  return metrics
