r"""Two-Stage VAE on MNIST, the paper's InfoGAN-SN net and schedule (Table 1: FID 12.6).

  # A first run: two stages in about 15 minutes on a 2-core CPU (README, Set up and run).
  python -m tsvae.main --config=configs/mnist.py:quick --workdir=/tmp/tsvae_mnist_quick \
      --config.data.manual_dir=../shared/data/mnist

  # The paper's protocol: 400 + 800 epochs (7-11 h for stage 1 alone on a 2-core CPU).
  python -m tsvae.main --config=configs/mnist.py --workdir=/tmp/tsvae_mnist \
      --config.data.manual_dir=../shared/data/mnist
"""

from configs import default

VARIANTS = ('quick',)


def get_config(variant=None):
  """The reference config; `variant='quick'` (`configs/mnist.py:quick`) the short first run.

  quick: the reference nets and losses with a budget that fits a 2-core CPU — 5 stage-1 epochs
  at the reference batch and learning rate, then 25 stage-2 epochs with the `large_batch` recipe
  of the stage-2 study (batch 512, learning rate 8e-4: the reference 1e-4 scaled with the
  batch), which brings γ_z down in minutes instead of hours. Sample grids are written; the
  evaluation (which first trains the proxy classifier) is left to `tsvae.evaluate`.
  """
  config = default.get_config()
  config.dataset = 'mnist'
  if variant is None:
    return config
  if variant not in VARIANTS:
    raise ValueError(f'unknown configs/mnist.py variant {variant!r}; known: {", ".join(VARIANTS)}')
  config.stage1.num_epochs = 5
  config.stage2.num_epochs = 25
  config.stage2.batch_size = 512
  config.stage2.learning_rate = 8e-4
  config.eval.enabled = False
  return config
