"""Stage 1 of the Fashion-MNIST recipe (`make fmnist`): the KL autoencoder whose latents the
latent SD-DiT (configs/fmnist_sddit.py) and DiffDis learn to generate.

Images are padded from 28x28 to 32x32 and encoded to 8x8x4 latents (two halvings): a 4x
compression, where SD's VAE compresses 48x. Fashion-MNIST's 28x28 pixels leave no room for
more: at 4x4 the DiT would see 4 tokens of 2x2 patches. Three levels of widths 16, 32, 64 with
one ResNet per level and the mid-block attention at 8x8 are 0.68M parameters, sized so that
900 steps of 64 images train in minutes on a 2-core CPU (docs/results.md). The loss is SD's
without LPIPS and the GAN (L1 + 1e-6 KL); docs/paper_notes.md ("The Fashion-MNIST
autoencoder") gives the reasons. At the end the test split is scored and the EMA weights are
exported in diffusers' format to <workdir>/diffusers/.
"""
import ml_collections

from configs import common
from diffdis_jax.data import fashion_mnist


def get_config():
  config = common.get_base_config()
  config.method = 'autoencoder'
  for section in ('sddit', 'edm', 'sample', 'init'):
    del config[section]
  config.model = ml_collections.ConfigDict(dict(
      name='fmnist-vae-f4c4', in_channels=1, block_out_channels=(16, 32, 64),
      layers_per_block=1, latent_channels=4, norm_num_groups=16, mid_block_attention=True))
  config.autoencoder = ml_collections.ConfigDict(dict(reconstruction='l1', kl_weight=1e-6))
  config.data = ml_collections.ConfigDict(dict(
      name='fashion_mnist', dir=fashion_mnist.DEBIAN_DIR, image_size=32))
  config.eval = ml_collections.ConfigDict(dict(
      classifier_dir=''))              # the metric's classifier cache ('': <workdir>/classifier)
  config.batch_size = 64
  config.total_steps = 900
  config.log_every = 100
  config.checkpoint_every = 300
  config.sample_every = 300
  config.ema_decay = 0.999
  config.optim.lr = 1e-3
  config.optim.warmup_steps = 100
  config.optim.grad_clip = 1.0
  config.mesh.data = -1
  return config
