"""SD-DiT's class-conditional sampler (EDM with classifier-free guidance) and its grids."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffdis_jax.diffusion import edm, samplers
from diffdis_jax.eval.sample import to_grid


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


def sample_grid(sample_fn, params, config, rng, decode=None) -> np.ndarray:
  """Samples for `grid_labels`, assembled into a uint8 grid; `decode` turns a latent model's
  samples into images in [-1, 1] (a VAE decoder)."""
  labels = jnp.asarray(grid_labels(config))
  m = config.model
  noise = jax.random.normal(rng, (len(labels), m.input_size, m.input_size, m.in_channels))
  images = sample_fn(params, noise, labels)
  if decode is not None:
    images = decode(images)
  return to_grid(jax.device_get(images), config.sample.grid_classes)
