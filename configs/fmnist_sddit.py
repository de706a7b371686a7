"""Stage 3 of the Fashion-MNIST recipe (`make fmnist`): SD-DiT on the 8x8x4 latents of the
project's own VAE (configs/fmnist_vae.py), read by the loader the ImageNet configs use.

The ImageNet recipe in miniature: latents extracted once to ArrayRecord (stage 2,
`--mode=extract_latents` with this config), a latent DiT-style model with patch 1 (64 tokens,
as DiT-XL/2 has 256 on 32x32 latents), samples decoded by the VAE, and scores from the
project's Fashion-MNIST classifier (fd_fmnist, sample_class_acc). DiT and MaskDiT are the
study's overrides of this config (configs/study.py), as for ImageNet.

Paths default to `make fmnist`'s layout under workdirs/fmnist/ (run from the repository root):
    vae/diffusers   the exported VAE (data.vae_path, sample.vae)
    latents/        the extracted latent set (data.dir)
    classifier/     the metric's classifier (eval.classifier_dir)
"""
from configs import common
from diffdis_jax.data import fashion_mnist

ROOT = 'workdirs/fmnist'


def get_config():
  config = common.get_base_config()
  config.data.name = 'latents'
  config.data.dir = f'{ROOT}/latents'
  config.data.vae_path = f'{ROOT}/vae/diffusers'
  config.data.latent_scale = 0.0     # the VAE's own scaling_factor (its config.json)
  ex = config.data.extract
  ex.source, ex.source_dir, ex.split = 'fashion_mnist', fashion_mnist.DEBIAN_DIR, 'train'
  ex.image_size, ex.batch_size, ex.shard_size = fashion_mnist.MODEL_SIDE, 500, 10_000

  m = config.model
  m.name = 'DiT-S/1'                 # patch 1 on 8x8 latents: 64 tokens
  m.input_size, m.in_channels, m.num_classes = 8, 4, fashion_mnist.NUM_CLASSES
  m.width, m.depth, m.num_heads = 128, 6, 4
  m.decoder_depth, m.decoder_width, m.decoder_heads = 2, 128, 4
  m.head = dict(hidden=512, bottleneck=128, out_dim=1024, num_layers=3)

  config.batch_size = 64
  config.total_steps = 1500
  config.log_every = 100
  config.checkpoint_every = 500
  config.sample_every = 500
  config.ema_decay = 0.999
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 200
  config.optim.grad_clip = 1.0
  # the teacher at a fixed low noise: better than the paper-reading default ('karras_next')
  # on every seed of the digits and Fashion-MNIST studies (docs/results.md); the studies
  # themselves compare from the default (configs/study.py)
  config.sddit.teacher_sigma = 'fixed'

  config.sample.vae = config.data.vae_path
  config.sample.steps = 18
  # DiT's guidance for showing samples (its FID setting is 1.5): at 1,500 steps of this small
  # model, 1.5 leaves many samples between classes (docs/results.md)
  config.sample.guidance = 4.0
  config.sample.per_class = 6
  config.sample.num_samples = 1000   # --mode=sample: scored by --mode=eval with the classifier
  config.sample.batch_size = 500
  config.sample.labels = 'balanced'
  config.eval.metric_samples = 1000  # fd_fmnist and sample_class_acc at the end of training
  config.eval.classifier_dir = f'{ROOT}/classifier'
  config.mesh.data = -1
  return config
