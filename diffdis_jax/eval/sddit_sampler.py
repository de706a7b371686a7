"""SD-DiT's class-conditional sampler and its grids.

The sampler is the one of the model's objective (`config.objective`; `sample.parameterization`
may name it too, and must then agree): 'edm' (EDM's Heun or Euler with classifier-free
guidance), 'ddpm' (DiT's, trained here or its released weights: epsilon and learned-range
variance on a respaced linear schedule, ancestral or DDIM) or 'flow' (SiT's: Euler or Heun on
the ODE, Euler-Maruyama on the SDE). An empty `sample.solver` takes the objective's default.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffdis_jax.diffusion import ddpm, edm, flow, samplers
from diffdis_jax.diffusion import objective as objective_lib
from diffdis_jax.eval.sample import to_grid

PARAMETERIZATIONS = objective_lib.NAMES


def sampler_of(config) -> tuple[str, str]:
  """(parameterization, solver) that `config` samples with: an empty field takes the
  objective's (its name, its default solver). Whether a set field fits the objective is
  tasks/sddit/checks.py's to say, before anything runs."""
  objective = objective_lib.from_config(config)
  s = config.sample
  return (s.get('parameterization') or objective.name,
          s.get('solver') or objective.default_solver)


def make_sample_fn(model, config):
  """sample(params, noise, labels) -> NHWC samples in data space (no mask at inference)."""
  parameterization, solver = sampler_of(config)
  if parameterization == 'ddpm':
    return _make_ddpm_sample_fn(model, config, solver)
  if parameterization == 'flow':
    return _make_flow_sample_fn(model, config, solver)
  if parameterization != 'edm':
    raise ValueError(f'sample.parameterization must be one of {PARAMETERIZATIONS}, got '
                     f'{parameterization!r}')
  s = config.sample

  def sample(params, noise, labels):
    def denoise(x, sigma, y):
      net = lambda scaled_x, c_noise: model.apply({'params': params}, scaled_x, c_noise, y)
      return edm.denoise(net, x, sigma, config.edm.sigma_data)

    denoiser = samplers.classifier_free_guidance(denoise, labels, model.num_classes,
                                                 s.guidance, s.guidance_channels)
    return samplers.edm_sample(denoiser, noise, num_steps=s.steps, sigma_min=s.sigma_min,
                               sigma_max=s.sigma_max, rho=s.rho, solver=solver)
  return sample


def noise_keys(noise):
  """One PRNG key per sample, made from the bits of its starting noise.

  The ancestral sampler draws fresh noise at every step; keying it by the sample's own start
  keeps what eval/sample_npz.py promises (a sample depends on its index only, not on the
  batch or the devices it ran on) without another argument through every caller.
  """
  flat = noise.reshape(noise.shape[0], -1)[:, :2].astype(jnp.float32)
  bits = jax.lax.bitcast_convert_type(flat, jnp.uint32)
  base = jax.random.PRNGKey(0)
  return jax.vmap(lambda b: jax.random.fold_in(jax.random.fold_in(base, b[0]), b[-1]))(bits)


def _make_ddpm_sample_fn(model, config, solver: str):
  """DiT's sampler (its sample.py / sample_ddp.py): the model sees the original step index
  as a float, guidance as its forward_with_cfg (sample.guidance_channels), no clipping."""
  s = config.sample
  schedule = ddpm.respaced_schedule(s.respacing)

  def sample(params, noise, labels):
    def net(x, timesteps, y):
      return model.apply({'params': params}, x, timesteps.astype(jnp.float32), y)

    # the output is epsilon then variance: "all" channels are epsilon's, never the variance
    model_fn = samplers.classifier_free_guidance(net, labels, model.num_classes, s.guidance,
                                                 s.guidance_channels or model.in_channels)
    return ddpm.sample_learned_range(model_fn, noise, schedule, noise_keys(noise),
                                     solver=solver)
  return sample


def _make_flow_sample_fn(model, config, solver: str):
  """SiT's samplers from t = 1 to 0 in sample.steps steps, guidance on the velocity as DiT
  guides its output (sample.guidance_channels)."""
  s = config.sample

  def sample(params, noise, labels):
    net = lambda x, t, y: model.apply({'params': params}, x, t, y)
    velocity = samplers.classifier_free_guidance(net, labels, model.num_classes, s.guidance,
                                                 s.guidance_channels)
    if solver == 'euler_maruyama':
      return flow.sde_sample(velocity, noise, noise_keys(noise), num_steps=s.steps)
    return flow.ode_sample(velocity, noise, num_steps=s.steps, solver=solver)
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
