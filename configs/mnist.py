r"""Two-Stage VAE on MNIST, the paper's InfoGAN-SN net and schedule (Table 1: FID 12.6).

  python -m tsvae.main --config=configs/mnist.py --workdir=/tmp/tsvae_mnist \
      --config.data.manual_dir=../shared/data/mnist
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'mnist'
  return config
