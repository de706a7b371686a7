"""EDM (Karras et al. 2022) formulation: noise levels, preconditioning, loss weights.

Everything here is a pure function of arrays; sigma has shape (batch,) unless noted and is
broadcast over NHWC images by `per_sample`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def per_sample(sigma, like):
  """Broadcast per-sample sigma (batch,) against an NHWC array."""
  return jnp.reshape(sigma, sigma.shape + (1,) * (like.ndim - sigma.ndim))


def sample_sigma(rng, batch: int, p_mean: float = -1.2, p_std: float = 1.2):
  """Training noise levels: ln(sigma) ~ N(p_mean, p_std^2)."""
  return jnp.exp(p_mean + p_std * jax.random.normal(rng, (batch,), jnp.float32))


def preconditioning(sigma, sigma_data: float = 0.5):
  """c_skip, c_out, c_in, c_noise of EDM's Table 1."""
  sigma = jnp.asarray(sigma, jnp.float32)
  s2, d2 = sigma ** 2, sigma_data ** 2
  c_skip = d2 / (s2 + d2)
  c_out = sigma * sigma_data / jnp.sqrt(s2 + d2)
  c_in = 1.0 / jnp.sqrt(s2 + d2)
  c_noise = jnp.log(sigma) / 4.0
  return c_skip, c_out, c_in, c_noise


def loss_weight(sigma, sigma_data: float = 0.5):
  """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2."""
  return (sigma ** 2 + sigma_data ** 2) / (sigma * sigma_data) ** 2


def denoise(network_fn, x, sigma, sigma_data: float = 0.5):
  """D(x; sigma) = c_skip x + c_out F(c_in x, c_noise): the preconditioned denoiser.

  `network_fn(scaled_x, c_noise)` returns F in float32 or the compute dtype.
  """
  c_skip, c_out, c_in, c_noise = preconditioning(sigma, sigma_data)
  f = network_fn(per_sample(c_in, x) * x, c_noise).astype(jnp.float32)
  return per_sample(c_skip, x) * x + per_sample(c_out, x) * f


def karras_sigmas(num_steps: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                  rho: float = 7.0):
  """The descending Karras noise grid of `num_steps` points (without the final 0)."""
  i = jnp.arange(num_steps, dtype=jnp.float32)
  inv_rho = 1.0 / rho
  ramp = i / max(num_steps - 1, 1)
  return (sigma_max ** inv_rho + ramp * (sigma_min ** inv_rho - sigma_max ** inv_rho)) ** rho


TEACHER_SIGMA_POLICIES = ('karras_next', 'scale', 'fixed', 'equal')


def teacher_sigma(sigma_student, policy: str = 'karras_next', *, grid_steps: int = 18,
                  scale: float = 0.5, fixed: float = 0.05, sigma_min: float = 0.002,
                  sigma_max: float = 80.0, rho: float = 7.0):
  """Noise level of the teacher's view on the same PF-ODE as the student's.

  'karras_next': the next lower point of a `grid_steps` Karras grid (the student's own sigma
      when it is already below the grid's smallest point);
  'scale': sigma_student * scale;  'fixed': a constant;  'equal': the student's sigma.
  """
  if policy == 'karras_next':
    grid = karras_sigmas(grid_steps, sigma_min, sigma_max, rho)[::-1]  # ascending
    below = jnp.searchsorted(grid, sigma_student, side='left') - 1
    return jnp.where(below >= 0, grid[jnp.maximum(below, 0)], sigma_student)
  if policy == 'scale':
    return sigma_student * scale
  if policy == 'fixed':
    return jnp.full_like(sigma_student, fixed)
  if policy == 'equal':
    return sigma_student
  raise ValueError(f'unknown teacher sigma policy {policy!r}; expected one of '
                   f'{TEACHER_SIGMA_POLICIES}')
