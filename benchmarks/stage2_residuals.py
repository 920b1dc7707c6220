r"""Why γ_z stays large: where stage 2's reconstruction error of z sits, per latent dim.

  python benchmarks/stage2_residuals.py --root=/root/study --recipe=reference --epochs=25 \
      --manual_dir=../shared/data/mnist --stage1_epochs=20 \
      --out=benchmarks/results/stage2_study_mnist/residuals_reference_e25.json

Reads a workdir of `benchmarks/stage2_study.py` (its stage-2 checkpoint at --epochs and the
stage-1 latents), draws z ~ q(z|x) for --num codes of the training set, passes them through
stage 2 in inference mode (z → μ_u → ẑ), and reports the mean squared residual (z − ẑ)² of the
stage-1 active dims (mean σ_z² < the evaluation's threshold) and of the inactive ones, the
single γ_z that would best explain it (√ of the mean over all dims, the optimum of the Gaussian
likelihood with one shared γ), and the learned γ_z; then the same with u drawn from q(u|z) as
in training (`_sampled_u`: the residual the ELBO and so the learned γ_z see), and how many u
dims have collapsed their posterior (mean σ_u² < 0.05). An inactive dim of z is N(0, 1) noise: stage
2 can lower its residual only by carrying it through u, at a KL cost.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stage2_study  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--root', required=True)
  p.add_argument('--recipe', default='reference', choices=tuple(stage2_study.RECIPES))
  p.add_argument('--epochs', type=int, required=True, help='the stage-2 milestone to read')
  p.add_argument('--dataset', default='mnist')
  p.add_argument('--manual_dir', default='')
  p.add_argument('--stage1_epochs', type=int, default=30)
  p.add_argument('--num', type=int, default=10_000)
  p.add_argument('--override', action='append', default=[],
                 help="the study's --override values (key=value), if it had any")
  p.add_argument('--out', required=True)
  return p.parse_args(argv)


def residuals(args):
  """The JSON record (see the module doc)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tsvae import config_lib  # pylint: disable=g-import-not-at-top
  from tsvae import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
  from tsvae import generation  # pylint: disable=g-import-not-at-top
  from tsvae import input_pipeline  # pylint: disable=g-import-not-at-top
  from tsvae import latents  # pylint: disable=g-import-not-at-top
  from tsvae import train  # pylint: disable=g-import-not-at-top
  from tsvae import stages  # pylint: disable=g-import-not-at-top
  from tsvae.metrics import diagnostics  # pylint: disable=g-import-not-at-top
  study = stage2_study.parse_args([f'--root={args.root}', f'--dataset={args.dataset}',
                                   f'--manual_dir={args.manual_dir}',
                                   f'--stage1_epochs={args.stage1_epochs}', '--out=unused'] +
                                  [f'--override={o}' for o in args.override])
  config = stage2_study.base_config(study)
  for key, value in dict(stage2_study.RECIPES[args.recipe], **{
      'stage2.enabled': True, 'stage2.num_epochs': args.epochs}).items():
    config_lib.set_dotted(config, key, value)
  workdir = os.path.join(args.root, f'{args.dataset}_s2_{args.recipe}')
  experiment = experiment_lib.setup(config, workdir, devices=jax.devices()[:1])
  spec = stages.stage2_spec(experiment)
  state2 = train.train_stage(spec, target_steps=args.epochs * spec.steps_per_epoch,
                             **stages.train_kwargs(experiment))
  if int(state2.step) != args.epochs * spec.steps_per_epoch:
    raise SystemExit(f'{workdir} holds step {int(state2.step)}, not epoch {args.epochs}.')
  codes = input_pipeline.read_latent_dataset_builder(latents.latents_dir(workdir)).load()
  mu, sigma = codes['mu'], codes['sigma']
  pick = np.sort(np.random.default_rng(0).choice(len(mu), min(args.num, len(mu)), replace=False))
  z = (mu[pick] + sigma[pick] * np.random.default_rng(1).standard_normal(mu[pick].shape)).astype(
      np.float32)
  v2 = generation.variables_of(state2)
  mu_u, sigma_u = latents.encode(experiment.model2, v2, z, 500)
  z_hat = np.asarray(generation.decode(experiment.model2, v2, mu_u))
  per_dim = np.mean(np.square(z - z_hat), axis=0)
  # What the ELBO sees: u drawn from q(u|z), as in training (the learned γ_z tracks this one).
  u = (mu_u + sigma_u * np.random.default_rng(2).standard_normal(mu_u.shape)).astype(np.float32)
  z_sampled = np.asarray(generation.decode(experiment.model2, v2, u))
  per_dim_sampled = np.mean(np.square(z - z_sampled), axis=0)
  active = diagnostics.active_dims(sigma, float(config.eval.active_dim_threshold))['active']
  inactive = np.setdiff1d(np.arange(mu.shape[1]), active)
  loggamma_z = generation.loggamma(experiment.model2, v2)
  return {
      'benchmark': 'stage2_residuals', 'recipe': args.recipe, 'stage2_epochs': args.epochs,
      'num_codes': int(len(z)), 'active_dims': int(len(active)),
      'residual_active_mean': float(per_dim[active].mean()) if len(active) else None,
      'residual_inactive_mean': float(per_dim[inactive].mean()) if len(inactive) else None,
      'z_variance_active_mean': float(z[:, active].var(axis=0).mean()) if len(active) else None,
      'z_variance_inactive_mean': (float(z[:, inactive].var(axis=0).mean()) if len(inactive)
                                   else None),
      'gamma_z_best_shared': float(np.sqrt(per_dim.mean())),
      'gamma_z_best_active_only': float(np.sqrt(per_dim[active].mean())) if len(active) else None,
      'gamma_z_learned': float(np.exp(loggamma_z)),
      'residual_sampled_u_active_mean': (float(per_dim_sampled[active].mean()) if len(active)
                                         else None),
      'residual_sampled_u_inactive_mean': (float(per_dim_sampled[inactive].mean())
                                           if len(inactive) else None),
      'gamma_z_best_shared_sampled_u': float(np.sqrt(per_dim_sampled.mean())),
      'sigma_u_mean': float(sigma_u.mean()),
      'num_u_dims_sigma_below_0.05': int(np.sum(np.mean(np.square(sigma_u), axis=0) < 0.05)),
      'residual_per_dim': [float(v) for v in per_dim],
      'active_dim_indices': [int(i) for i in active],
      'commit': stage2_study._record_base(study, config)['commit'],  # pylint: disable=protected-access
      'command': ' '.join(sys.argv),
  }


def main(argv=None):
  args = parse_args(argv)
  record = residuals(args)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(record, f, indent=1, sort_keys=True)
  print(json.dumps({k: v for k, v in record.items() if not isinstance(v, list)}, indent=1))


if __name__ == '__main__':
  main()
