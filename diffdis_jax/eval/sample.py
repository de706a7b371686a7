"""Images out of samplers: grids of samples as PNG files, and latents through a VAE decoder."""
from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np
from PIL import Image

from diffdis_jax.core import files


def to_grid(images, cols: int, pad: int = 1) -> np.ndarray:
  """(n, h, w, c) in [-1, 1] -> one uint8 image, `cols` per row, 1-pixel white gutters."""
  images = np.asarray(images, np.float32)
  n, h, w, c = images.shape
  rows = -(-n // cols)
  pixels = np.clip((images + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    top, left = pad + r * (h + pad), pad + q * (w + pad)
    grid[top:top + h, left:left + w] = pixels[i]
  return grid


def save_png(path: str, grid: np.ndarray, upscale: int = 1):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  if upscale > 1:
    image = image.resize((image.width * upscale, image.height * upscale), Image.NEAREST)
  # the raw pixels: more than the PNG will take
  with files.atomic_path(path, suffix='.png', what='a sample grid',
                         needed=image.width * image.height * len(image.getbands())) as tmp:
    image.save(tmp)


def decode_latents(vae, vae_params, latents):
  """Images in [-1, 1] (clipped) from scaled SD latents through the VAE decoder."""
  images = vae.apply({'params': vae_params}, latents, method='decode_latents')
  return jnp.clip(images.astype(jnp.float32), -1.0, 1.0)
