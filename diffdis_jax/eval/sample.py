"""Class-conditional sampling with a trained SD-DiT/DiT and sample grids."""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from diffdis_jax.diffusion import edm, samplers


def make_sample_fn(model, config):
  """sample(params, noise, labels) -> NHWC samples in data space (no mask at inference)."""
  s = config.sample

  def sample(params, noise, labels):
    def denoise(x, sigma, y):
      net = lambda scaled_x, c_noise: model.apply({'params': params}, scaled_x, c_noise, y)
      return edm.denoise(net, x, sigma, config.edm.sigma_data)

    denoiser = samplers.classifier_free_guidance(denoise, labels, model.num_classes,
                                                 s.guidance)
    return samplers.edm_sample(denoiser, noise, num_steps=s.steps, sigma_min=s.sigma_min,
                               sigma_max=s.sigma_max, rho=s.rho, solver=s.solver)
  return sample


def grid_labels(config) -> np.ndarray:
  """Labels of the grid, row-major: `per_class` rows, `grid_classes` columns spread over the
  classes."""
  cols = np.linspace(0, config.model.num_classes - 1, config.sample.grid_classes).round()
  return np.tile(cols.astype(np.int32), config.sample.per_class)


def to_grid(images, cols: int, pad: int = 1) -> np.ndarray:
  """(n, h, w, c) in [-1, 1] -> one uint8 image, `cols` per row, 1-pixel white gutters."""
  images = np.asarray(images, np.float32)
  n, h, w, c = images.shape
  rows = -(-n // cols)
  pixels = np.clip((images + 1) * 127.5 + 0.5, 0, 255).astype(np.uint8)
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, q = divmod(i, cols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = pixels[i]
  return grid


def save_png(path: str, grid: np.ndarray, upscale: int = 1):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  if upscale > 1:
    image = image.resize((image.width * upscale, image.height * upscale), Image.NEAREST)
  image.save(path)


def sample_grid(sample_fn, params, config, rng) -> np.ndarray:
  """Samples for `grid_labels`, assembled into a uint8 grid (pixel-space models)."""
  labels = jnp.asarray(grid_labels(config))
  m = config.model
  noise = jax.random.normal(rng, (len(labels), m.input_size, m.input_size, m.in_channels))
  images = sample_fn(params, noise, labels)
  return to_grid(jax.device_get(images), config.sample.grid_classes)
