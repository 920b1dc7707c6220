r"""Two-Stage VAE on CIFAR-10, InfoGAN-SN net (Table 1: FID 72.9).

  python -m tsvae.main --config=configs/cifar10.py --workdir=/tmp/tsvae_cifar10 \
      --config.data.manual_dir=../shared/data/cifar10

The authors' script trains CIFAR-10 for 1000 / 2000 epochs (stage 1 / stage 2) with the default
halving schedule. Offline, `manual_dir` holds cifar10_jpg_q75.zip: label results "CIFAR-10 (JPEG q75)".
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'cifar10'
  config.stage1.num_epochs = 1000
  config.stage2.num_epochs = 2000
  return config
