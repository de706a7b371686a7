"""Discrete-time DDPM/DDIM math (Stable Diffusion's schedule): pure functions, no models.

Timesteps are integer indices 0 .. T-1 into `alphas_cumprod`, as in diffusers; the UNet's time
embedding receives the same index. `scale` multiplies the clean signal in the forward process
(DiffDis's gamma on the text query: x_t = scale * sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps);
the samplers work on the state x_t, whose clean end is scale * x_0.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

PREDICTIONS = ('epsilon', 'x0', 'v_prediction')
DDIM_SPACINGS = ('leading', 'trailing', 'linspace')   # diffusers' names


def betas(num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
          schedule: str = 'scaled_linear') -> np.ndarray:
  """The beta schedule (float64 numpy: a constant of the program, not traced)."""
  if schedule == 'scaled_linear':  # SD 1.x/2.x: linear in sqrt(beta)
    return np.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps) ** 2
  if schedule == 'linear':
    return np.linspace(beta_start, beta_end, num_train_timesteps)
  raise ValueError(f"beta schedule must be 'scaled_linear' or 'linear', got {schedule!r}")


def alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                   beta_end: float = 0.012, schedule: str = 'scaled_linear') -> jax.Array:
  """abar_t = prod_{s <= t} (1 - beta_s), float32 of shape (T,)."""
  b = betas(num_train_timesteps, beta_start, beta_end, schedule)
  return jnp.asarray(np.cumprod(1.0 - b), jnp.float32)


def _expand(values, like):
  """(batch,) -> broadcastable against `like` (batch, ...)."""
  return values.reshape(values.shape + (1,) * (like.ndim - values.ndim))


def sample_timesteps(rng, batch: int, num_train_timesteps: int):
  """Uniform integer timesteps in [0, T), int32 (batch,)."""
  return jax.random.randint(rng, (batch,), 0, num_train_timesteps, jnp.int32)


def q_sample(x0, t, noise, abar, scale: float = 1.0):
  """Forward process: scale * sqrt(abar_t) * x0 + sqrt(1 - abar_t) * noise, in float32."""
  a = _expand(abar[t], x0)
  return (scale * jnp.sqrt(a) * x0.astype(jnp.float32)
          + jnp.sqrt(1.0 - a) * noise.astype(jnp.float32))


def v_target(x0, t, noise, abar, scale: float = 1.0):
  """The v-prediction target sqrt(abar) * eps - sqrt(1 - abar) * (scale * x0)."""
  a = _expand(abar[t], x0)
  return jnp.sqrt(a) * noise - jnp.sqrt(1.0 - a) * scale * x0


def x0_and_eps(pred, x_t, abar_t, prediction: str, scale: float = 1.0):
  """(scaled clean state scale * x0_hat, eps_hat) from a network output of kind `prediction`.

  `abar_t` broadcasts against x_t (e.g. (batch, 1, 1, 1)). For 'x0' the network predicts the
  unscaled x0, so the state's clean end is scale * pred.
  """
  pred, x_t = pred.astype(jnp.float32), x_t.astype(jnp.float32)
  sa, s1a = jnp.sqrt(abar_t), jnp.sqrt(1.0 - abar_t)
  if prediction == 'epsilon':
    return (x_t - s1a * pred) / sa, pred
  if prediction == 'x0':
    x0 = scale * pred
    return x0, (x_t - sa * x0) / s1a
  if prediction == 'v_prediction':
    return sa * x_t - s1a * pred, s1a * x_t + sa * pred
  raise ValueError(f'prediction must be one of {PREDICTIONS}, got {prediction!r}')


def ddim_timesteps(num_train_timesteps: int, num_steps: int, spacing: str = 'leading',
                   steps_offset: int = 1) -> np.ndarray:
  """Descending int32 timesteps of a DDIM run, with diffusers' three spacings.

  'leading' (SD's pipeline default, with steps_offset 1) starts below T-1; 'trailing' starts at
  T-1, the better choice when the start is pure noise; 'linspace' spans 0 .. T-1.
  """
  T = num_train_timesteps
  if not 1 <= num_steps <= T:
    raise ValueError(f'num_steps must be in [1, {T}], got {num_steps}')
  if spacing == 'leading':
    ts = (np.arange(num_steps) * (T // num_steps)).round()[::-1] + steps_offset
  elif spacing == 'trailing':
    ts = np.round(np.arange(T, 0, -T / num_steps)) - 1
  elif spacing == 'linspace':
    ts = np.linspace(0, T - 1, num_steps).round()[::-1]
  else:
    raise ValueError(f'spacing must be one of {DDIM_SPACINGS}, got {spacing!r}')
  return np.clip(ts, 0, T - 1).astype(np.int32)


def ddim_step(x0, eps, abar_prev):
  """Deterministic DDIM (eta 0): x_prev = sqrt(abar_prev) * x0 + sqrt(1 - abar_prev) * eps."""
  return jnp.sqrt(abar_prev) * x0 + jnp.sqrt(1.0 - abar_prev) * eps


# x0_eps_fn(x_t, t) -> (scaled x0_hat, eps_hat); t is an int32 (batch,) array
X0EpsFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def ddim_sample(x0_eps_fn: X0EpsFn, x_T, abar, timesteps) -> jax.Array:
  """Run DDIM from x_T down `timesteps` (descending) and return the final clean estimate.

  The last step goes to abar = 1, i.e. returns the model's x0 estimate at the smallest
  timestep (diffusers' `set_alpha_to_one=True`). A lax.scan: one compiled body whatever the
  number of steps.
  """
  timesteps = jnp.asarray(timesteps, jnp.int32)
  batch = x_T.shape[0]
  abar_prev = jnp.concatenate([abar[timesteps[1:]], jnp.ones((1,), jnp.float32)])

  def body(x, step):
    t, a_prev = step
    x0, eps = x0_eps_fn(x, jnp.full((batch,), t, jnp.int32))
    return ddim_step(x0, eps, a_prev).astype(jnp.float32), None

  x, _ = jax.lax.scan(body, x_T.astype(jnp.float32), (timesteps, abar_prev))
  return x


def guided(cond, uncond, scale: float):
  """Classifier-free guidance uncond + scale * (cond - uncond); scale 1 is `cond` alone.

  The paper's (1 + w) * cond - w * uncond is scale = 1 + w.
  """
  return uncond + scale * (cond - uncond)
