"""DiT's training loss (diffusion/ddpm.training_losses) against a float64 numpy oracle built
from diffusers' DDPMScheduler: its betas and alphas_cumprod, and from them the posterior mean
and variance, the Gaussian KL and the discretised decoder likelihood, each written here."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from diffdis_jax.diffusion import ddpm

RTOL = 1e-5
STEPS = np.array([0, 0, 1, 2, 37, 500, 998, 999])   # t = 0 twice: both decoder branches


def _scheduler_float64():
  """DiT's schedule as diffusers builds it (linear betas 1e-4 .. 0.02), recomputed in float64
  by diffusers' own formulas: in float32 its cumulative product differs by ~1e-6 relative,
  which the oracle must not carry."""
  s = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                    beta_schedule='linear', variance_type='fixed_small', clip_sample=False)
  c = s.config
  s.betas = torch.linspace(c.beta_start, c.beta_end, c.num_train_timesteps, dtype=torch.float64)
  s.alphas = 1.0 - s.betas
  s.alphas_cumprod = torch.cumprod(s.alphas, dim=0)
  s.one = torch.tensor(1.0, dtype=torch.float64)
  return s


def _oracle(x0, eps_hat, v, noise, t):
  """DiT's mse, vb and loss in float64 numpy, NHWC, per sample."""
  s = _scheduler_float64()
  beta = s.betas.numpy()
  abar = s.alphas_cumprod.numpy()
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  post_var = beta * (1 - abar_prev) / (1 - abar)
  # diffusers' own posterior variance ('fixed_small') must be the one we use for t >= 1
  for k in (1, 37, 999):
    np.testing.assert_allclose(s._get_variance(k).item(), post_var[k], rtol=1e-12)
  post_log_var = np.log(np.concatenate([[post_var[1]], post_var[1:]]))  # DiT's clip at t = 0
  b = lambda a: a[t][:, None, None, None]
  x_t = np.sqrt(b(abar)) * x0 + np.sqrt(1 - b(abar)) * noise

  def posterior_mean(x_start):  # diffusers' step(): the coefficients of x_0 and x_t
    return (np.sqrt(b(abar_prev)) * b(beta) / (1 - b(abar)) * x_start
            + np.sqrt(1 - b(beta)) * (1 - b(abar_prev)) / (1 - b(abar)) * x_t)

  x0_hat = (x_t - np.sqrt(1 - b(abar)) * eps_hat) / np.sqrt(b(abar))
  mean_p = posterior_mean(x0_hat)
  frac = (v + 1) / 2
  log_var_p = frac * np.log(b(beta)) + (1 - frac) * b(post_log_var)
  mean_q, log_var_q = posterior_mean(x0), b(post_log_var)
  kl = 0.5 * (-1 + log_var_p - log_var_q + np.exp(log_var_q - log_var_p)
              + (mean_q - mean_p) ** 2 / np.exp(log_var_p))

  def cdf(z):  # DiT's tanh approximation of the standard normal CDF
    return 0.5 * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))
  std = np.exp(0.5 * log_var_p)
  upper, lower = cdf((x0 - mean_p + 1 / 255) / std), cdf((x0 - mean_p - 1 / 255) / std)
  log_p = np.where(x0 < -0.999, np.log(np.maximum(upper, 1e-12)),
                   np.where(x0 > 0.999, np.log(np.maximum(1 - lower, 1e-12)),
                            np.log(np.maximum(upper - lower, 1e-12))))
  per = lambda a: a.reshape(len(t), -1).mean(axis=1)
  vb = np.where(t == 0, -per(log_p), per(kl)) / np.log(2)
  mse = per((noise - eps_hat) ** 2)
  return {'mse': mse, 'vb': vb, 'loss': mse + vb}


def _inputs(seed=0, shape=(4, 4, 3)):
  """Fixed 8-bit images in [-1, 1] (the end levels included), noise, and an output whose
  epsilon is near the noise (so the t = 0 decoder bins matter) with v spanning [-1, 1]."""
  rng = np.random.default_rng(seed)
  n = len(STEPS)
  x0 = rng.integers(0, 256, (n,) + shape) / 127.5 - 1.0
  x0[:, 0, 0, :] = -1.0
  x0[:, 0, 1, :] = 1.0
  noise = rng.standard_normal((n,) + shape)
  eps_hat = noise + 0.3 * rng.standard_normal((n,) + shape)
  eps_hat[1] = noise[1] + 0.05 * rng.standard_normal(shape)   # a sharp decoder at t = 0
  v = rng.uniform(-1, 1, (n,) + shape)
  v[:, 1, 1, :] = [-1.0, 1.0, 0.0]
  return (x0.astype(np.float32), noise.astype(np.float32), eps_hat.astype(np.float32),
          v.astype(np.float32))


def _ours(x0, noise, eps_hat, v, t=STEPS, fn=ddpm.training_losses):
  out = jnp.concatenate([jnp.asarray(eps_hat), jnp.asarray(v)], axis=-1)
  return fn(ddpm.respaced_schedule(''), out, jnp.asarray(x0), jnp.asarray(t, jnp.int32),
            jnp.asarray(noise))


def test_training_losses_match_float64_oracle():
  x0, noise, eps_hat, v = _inputs()
  ours = _ours(x0, noise, eps_hat, v)
  # the oracle sees the very float32 inputs, in float64
  want = _oracle(*(a.astype(np.float64) for a in (x0, eps_hat, v, noise)), STEPS)
  for key in ('mse', 'vb', 'loss'):
    assert ours[key].shape == (len(STEPS),) and ours[key].dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(ours[key]), want[key], rtol=RTOL, err_msg=key)
  assert np.all(want['vb'] > 0)   # bits: a KL, and an NLL of a discrete distribution


def test_vb_reaches_only_the_variance_channels():
  x0, noise, eps_hat, v = _inputs(seed=1)
  schedule = ddpm.respaced_schedule('')
  t = jnp.asarray(STEPS, jnp.int32)
  out = jnp.concatenate([jnp.asarray(eps_hat), jnp.asarray(v)], axis=-1)
  vb_grad = jax.grad(lambda o: ddpm.training_losses(schedule, o, x0, t, noise)['vb'].sum())(out)
  mse_grad = jax.grad(lambda o: ddpm.training_losses(schedule, o, x0, t, noise)['mse'].sum())(out)
  assert np.all(np.asarray(vb_grad[..., :3]) == 0.0)
  assert np.all(np.isfinite(np.asarray(vb_grad))) and np.abs(vb_grad[..., 3:]).min() > 0
  assert np.all(np.asarray(mse_grad[..., 3:]) == 0.0) and np.abs(mse_grad[..., :3]).max() > 0
