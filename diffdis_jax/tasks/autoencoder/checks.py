"""The autoencoder's config checks: the network's sizes, the loss and the images it trains on.
Each problem is one ConfigError line that says what to fix; the image files are read (they
are small) so that a broken file stops the run before anything compiles."""
from __future__ import annotations

from diffdis_jax.core.checks import check, one_of, positive_int
from diffdis_jax.data import fashion_mnist
from diffdis_jax.objectives.autoencoder import RECONSTRUCTIONS

IMAGE_SETS = ('fashion_mnist',)


def check_config(config):
  m, a, data = config.model, config.autoencoder, config.data
  widths = tuple(m.block_out_channels)
  check(len(widths) >= 1 and all(isinstance(w, int) and w > 0 for w in widths),
        f'model.block_out_channels={widths} must be positive widths, one per level')
  check(all(w % m.norm_num_groups == 0 for w in widths),
        f'every width of model.block_out_channels={widths} must be divisible by '
        f'model.norm_num_groups={m.norm_num_groups}')
  for field in ('layers_per_block', 'latent_channels', 'in_channels'):
    positive_int(m[field], f'model.{field}')
  one_of(a.reconstruction, RECONSTRUCTIONS, 'autoencoder.reconstruction')
  check(a.kl_weight >= 0, f'autoencoder.kl_weight must be >= 0, got {a.kl_weight}')
  one_of(data.name, IMAGE_SETS, 'data.name')
  factor = 2 ** (len(widths) - 1)
  check(data.image_size >= fashion_mnist.SIDE and data.image_size % factor == 0,
        f'data.image_size={data.image_size} must be at least {fashion_mnist.SIDE} (the images '
        f'are padded, never cropped) and a multiple of {factor} ({len(widths)} levels halve '
        'it that often)')
  check(m.in_channels == 1, f'model.in_channels={m.in_channels}: Fashion-MNIST is grayscale; '
                            'pass --config.model.in_channels=1')
  fashion_mnist.check_dir(data.dir)
