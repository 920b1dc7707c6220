"""The run's record in metrics.json: what was evaluated, under which protocol, with labels."""

from typing import Any, Iterator, Tuple

from tsvae.evaluators import common

METRIC_LABELS = {
    'fid_stage2': ('FID (TF inception-2015-12-05 pool3; preprocessing in fid_preprocess, '
                   'tf_graph = the paper\'s) of stage-2 samples'),
    'fid_stage1': 'FID of stage-1 samples (z ~ N(0, I) through the stage-1 decoder)',
    'fid_recon': 'FID of reconstructions of the test images',
    'fid_gmm': 'FID of ex-post GMM samples (see proxy_fd_gmm)',
    'fid_train': ('FID of as many random real training images: the floor of FID at this '
                  'sample size and protocol'),
    'proxy_fd_stage2': ('Frechet classifier distance (proxy FD: penultimate features of the '
                        'project\'s own CNN classifier; NOT comparable to published FID) of '
                        'stage-2 samples'),
    'proxy_fd_stage1': 'proxy FD of stage-1 samples',
    'proxy_fd_gmm': ('proxy FD of ex-post GMM samples (a full-covariance GMM fitted to the '
                     'stage-1 mu_z of the training set, decoded by the stage-1 decoder)'),
    'proxy_fd_recon': 'proxy FD of reconstructions of the test images',
    'proxy_fd_train': ('proxy FD of as many random real training images: the floor of the '
                       'metric at this sample size'),
    'classifier_test_accuracy': 'test accuracy of the proxy classifier',
    'active_dims': 'latent dims whose mean sigma_z^2 over the training set < threshold',
    'mmd_z': 'unbiased MMD^2 between stage-1 codes z and N(0, I) (see mmd_bandwidth_rule)',
    'mmd_u': 'unbiased MMD^2 between stage-2 codes u and N(0, I)',
    'loggamma_x': 'final log gamma of stage 1 (gamma is a standard deviation)',
    'loggamma_z': 'final log gamma of stage 2',
    'num_samples': 'generated images per set = random test images used',
    'stage2_noise_scale': ('s in the stage-2 samples z = z_hat(u) + s * gamma_z * eps (1 = the '
                           'reference, 0 = the stage-2 decoder mean)'),
    'rate_kl': ('rate: KL(q(z|x) || N(0, I)) in nats, mean over the test images (for '
                'vae_beta at the chosen beta, stage1.beta_cond.beta)'),
    'distortion_mse': ('distortion: per-pixel MSE of the decoder mean at z = mu + sigma * eps, '
                       'mean over the test images'),
    'rd_betas': 'vae_beta: the betas of eval.beta_values the one network was evaluated at',
    'rd_rate_kl': 'vae_beta: rate_kl at each of rd_betas',
    'rd_distortion_mse': 'vae_beta: distortion_mse at each of rd_betas',
    'bn_zero_debias': ('stage-1 BatchNorm moving averages bias-corrected as TF1 zero_debias '
                       '(the reference) or plain EMA from 0 / 1'),
}


def run_record(inputs: common.EvalInputs) -> Iterator[Tuple[str, Any]]:
  """Dataset, sample counts, sampling settings, the stages' steps and the ex-post GMM."""
  c = inputs.config
  yield 'dataset', c.dataset
  # Both CIFAR-10 routes hold the authors' JPEG q75 round trip (tsvae.datasets).
  yield 'dataset_label', 'CIFAR-10 (JPEG q75)' if c.dataset == 'cifar10' else c.dataset
  yield 'num_samples', inputs.num_samples
  yield 'num_samples_requested', inputs.num_requested
  yield 'test_subset_seed', inputs.seed
  yield 'min_max_stretch', bool(c.eval.min_max_stretch)
  yield 'pixel_noise', bool(c.sampling.pixel_noise)
  yield 'stage2_noise_scale', float(c.sampling.stage2_noise_scale)
  yield 'bn_zero_debias', bool(c.stage1.bn_zero_debias)
  yield 'reconstructions_of', 'the same random test images the sets are compared against'
  yield 'metric_labels', METRIC_LABELS
  yield 'stage1_step', inputs.stage1_step
  yield 'stage2_step', (inputs.stage2_step if inputs.stage2_step is not None
                        else common.Unavailable(inputs.stage2_reason))
  yield 'stage2_unavailable_reason', inputs.stage2_reason
  yield 'expost_gmm', None if inputs.gmm is None else inputs.gmm.summary()
  yield 'gmm_unavailable_reason', inputs.missing.get('gmm')
