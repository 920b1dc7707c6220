r"""Two-Stage VAE on CelebA 64x64 with the WAE net and the WAE crop (140 px) (paper: FID ~34).

  python -m tsvae.main --config=configs/celeba_wae.py --workdir=/tmp/tsvae_celeba_wae

The authors' WAE-net schedule: 70 / 70 epochs, lr halved every 30 epochs.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'celeba140'
  config.arch = 'wae'
  config.stage1.num_epochs = 70
  config.stage1.lr_decay_epochs = 30
  config.stage2.num_epochs = 70
  config.stage2.lr_decay_epochs = 30
  return config
