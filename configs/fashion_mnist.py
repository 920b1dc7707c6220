r"""Two-Stage VAE on Fashion-MNIST, InfoGAN-SN net, the paper's schedule (Table 1: FID 29.3).

  python -m tsvae.main --config=configs/fashion_mnist.py --workdir=/tmp/tsvae_fashion \
      --config.data.manual_dir=../shared/data/fashion_mnist
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'fashion_mnist'
  return config
