r"""Two-Stage VAE on CelebA 64x64 with the WAE net, as the authors ran it (paper: FID ~34).

  python -m tsvae.main --config=configs/celeba_wae.py --workdir=/tmp/tsvae_celeba_wae

The authors' WAE-net schedule: 70 / 70 epochs, lr halved every 30 epochs.

Crop. The authors' README runs this net with `python demo.py --dataset celeba --epochs 70
--lr-epochs 30 --epochs2 70 --lr-epochs2 30 --network-structure Wae` (daib13/TwoStageVAE at
8718623), and `--dataset celeba` loads data/celeba/*.npy, which their `preprocess.py` makes with
the 128-px crop img[45:173, 25:153] resized to 64: tsvae's `celeba`, the default here. The same
`preprocess.py` also makes `celeba140` (crop [39:179, 19:159], commented there as consistent with
the WAE paper's preprocessing), which no command of theirs trains on; for the WAE paper's
protocol pass `--config.dataset=celeba140`. The two crops are different experiments (a workdir
records its dataset): a workdir started with this config before it defaulted to `celeba` resumes
with `--config.dataset=celeba140`.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.dataset = 'celeba'  # The authors' README command; 'celeba140' = the WAE paper's crop.
  config.arch = 'wae'
  config.stage1.num_epochs = 70
  config.stage1.lr_decay_epochs = 30
  config.stage2.num_epochs = 70
  config.stage2.lr_decay_epochs = 30
  return config
