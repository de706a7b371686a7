"""DiffDis on Fashion-MNIST latents: the Stable Diffusion recipe in miniature.

  make demo-diffdis-fmnist          # the VAE and latents of `make fmnist` first, when missing

The same DiffDisUNet, generation pass and alignment pass as configs/diffdis_sd15.py, at toy
size: a two-level UNet on the 8x8x4 latents of the project's Fashion-MNIST VAE (read from
the set `make fmnist` extracts, as SD-DiT reads it), conditioned by a small CLIP text
encoder trained from scratch on the caption set (data/fashion_mnist_captions.py: templates
and synonyms around the class names, split into training and held-out prompts) and then
frozen. At the end, on the 10,000 test images (through the VAE's encoder): zero-shot top-1
and top-5 with the training prompts and with the held-out prompts alone
(zeroshot_top1_heldout), image<->caption retrieval R@1/5/10 with captions of each prompt
set, and text-to-image samples of the class prompts scored by fd_fmnist and
sample_class_acc; all to metrics.jsonl, and with --mode=eval to eval.json.

Paths default to `make fmnist`'s layout under workdirs/fmnist/ (run from the repository root).
"""
from configs import diffdis_common
from diffdis_jax.data import fashion_mnist
from diffdis_jax.data import fashion_mnist_captions as captions

ROOT = 'workdirs/fmnist'


def get_config():
  config = diffdis_common.diffdis_config()
  config.data.name = 'captioned_fmnist'
  config.data.dir = f'{ROOT}/latents'
  config.data.vae_path = f'{ROOT}/vae/diffusers'
  config.data.latent_scale = 0.0     # the VAE's own scaling_factor (its config.json)
  config.data.extract.source = 'fashion_mnist'
  config.data.extract.source_dir = fashion_mnist.DEBIAN_DIR  # the test images and the metric's

  # the VAE's 8x8x4 latents
  diffdis_common.captioned_demo(
      config, captions, input_size=8, in_channels=4, channels=(64, 128), norm_num_groups=16,
      hidden_size=64, intermediate_size=128, projection_dim=64, image_hidden=256,
      pretrain_steps=600, pretrain_batch=256, pretrain_lr=2e-3)
  d = config.diffdis
  d.zeroshot.steps = 10
  d.zeroshot.batch = 500
  d.sample.steps = 20
  d.sample.guidance = 4.0

  config.batch_size = 64
  config.total_steps = 2000
  config.log_every = 100
  config.checkpoint_every = 1000
  config.sample_every = 1000
  config.ema_decay = 0.999
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 200
  config.optim.grad_clip = 1.0
  config.eval.metric_samples = 1000
  config.eval.classifier_dir = f'{ROOT}/classifier'
  config.mesh.data = -1
  return config
