r"""Two-Stage VAE on CelebA 64x64 with the authors' ResNet (their README's CelebA setting).

  python -m tsvae.main --config=configs/celeba_resnet.py --workdir=/tmp/tsvae_celeba_resnet

num_scale 4, base_dim 32, κ = 128; 100 / 100 epochs, lr halved every 40 epochs.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'celeba'
  config.arch = 'resnet'
  config.latent_dim = 128
  config.resnet.num_scale = 4
  config.resnet.base_dim = 32
  config.stage1.num_epochs = 100
  config.stage1.lr_decay_epochs = 40
  config.stage2.num_epochs = 100
  config.stage2.lr_decay_epochs = 40
  return config
