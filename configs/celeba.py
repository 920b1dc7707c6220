r"""Two-Stage VAE on CelebA 64x64 (128-px centre crop), InfoGAN-SN net (Table 1: FID 44.4).

  python -m tsvae.main --config=configs/celeba.py --workdir=/tmp/tsvae_celeba

Online, tfds downloads `celeb_a`. Offline, point `--config.data.manual_dir` at a folder holding
`img_align_celeba/` (the aligned JPEGs) and `list_eval_partition.txt`.
The schedule is the reference default (400 / 800 epochs, lr halved every 150 / 300); at 162,770
images per epoch that is long: cap it with --config.stage1.num_epochs for a budget run.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'celeba'
  return config
