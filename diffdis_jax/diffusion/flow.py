"""The linear interpolant of SiT (Ma et al. 2024) with a velocity target: pure functions.

Time runs as a noise level, as EDM's sigma does: x_t = (1 - t) x_0 + t * noise, t in [0, 1],
t = 0 the data and t = 1 pure noise (SiT writes the same path with its t reversed). The network
predicts the velocity dx_t/dt = noise - x_0; its loss is the plain mean squared error. Samplers
integrate from t = 1 down to 0: Euler or Heun on the probability-flow ODE, or Euler-Maruyama on
SiT's reverse SDE. Classifier-free guidance applies to the velocity as to a denoiser, through
`samplers.classifier_free_guidance` (t in place of sigma), on DiT's channels.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

T_DISTRIBUTIONS = ('uniform', 'logit_normal')
ODE_SOLVERS = ('euler', 'heun')
SOLVERS = ODE_SOLVERS + ('euler_maruyama',)

# velocity_fn(x_t, t) -> the predicted velocity, with t of shape (batch,)
VelocityFn = Callable[[jax.Array, jax.Array], jax.Array]


def _expand(values, like):
  """(batch,) -> broadcastable against `like` (batch, ...)."""
  return jnp.reshape(values, values.shape + (1,) * (like.ndim - values.ndim))


def sample_t(rng, batch: int, distribution: str = 'uniform', mean: float = 0.0,
             std: float = 1.0):
  """Training times (batch,) float32: uniform on [0, 1) (SiT), or logit-normal,
  t = sigmoid(mean + std * z) (SD3's choice, which favours the middle of the path)."""
  if distribution == 'uniform':
    return jax.random.uniform(rng, (batch,), jnp.float32)
  if distribution == 'logit_normal':
    return jax.nn.sigmoid(mean + std * jax.random.normal(rng, (batch,), jnp.float32))
  raise ValueError(f't distribution must be one of {T_DISTRIBUTIONS}, got {distribution!r}')


def interpolate(x0, noise, t):
  """The point x_t = (1 - t) x0 + t noise of the path, float32."""
  t = _expand(jnp.asarray(t, jnp.float32), x0)
  return (1.0 - t) * x0.astype(jnp.float32) + t * noise.astype(jnp.float32)


def velocity_target(x0, noise):
  """dx_t/dt = noise - x0, the same at every t."""
  return noise.astype(jnp.float32) - x0.astype(jnp.float32)


def velocity_loss(velocity, x0, noise):
  """Per-sample mean squared error of the velocity, (batch,) float32."""
  err = (velocity.astype(jnp.float32) - velocity_target(x0, noise)) ** 2
  return jnp.mean(err, axis=tuple(range(1, err.ndim)))


def score_from_velocity(velocity, x, t):
  """grad log p_t(x) = -E[noise | x_t] / t, where E[noise | x_t] = x + (1 - t) v (from
  x = (1 - t) E[x0 | x] + t E[noise | x] and v = E[noise | x] - E[x0 | x])."""
  t = _expand(jnp.asarray(t, jnp.float32), x)
  return -(x + (1.0 - t) * velocity) / t


def ode_sample(velocity_fn: VelocityFn, noise, *, num_steps: int = 50,
               solver: str = 'heun') -> jax.Array:
  """Integrate dx/dt = v(x, t) from x_1 = noise down to t = 0 on `num_steps` equal steps.

  'euler' takes num_steps evaluations; 'heun' (second order) corrects every step, the last
  included (the velocity is defined at t = 0): 2 * num_steps evaluations.
  """
  if solver not in ODE_SOLVERS:
    raise ValueError(f'solver must be one of {ODE_SOLVERS}, got {solver!r}')
  if num_steps < 1:
    raise ValueError(f'num_steps must be positive, got {num_steps}')
  batch = noise.shape[0]
  ts = jnp.linspace(1.0, 0.0, num_steps + 1, dtype=jnp.float32)

  def step(x, pair):
    t_cur, t_next = pair[0], pair[1]
    v = velocity_fn(x, jnp.full((batch,), t_cur)).astype(jnp.float32)
    x_next = x + (t_next - t_cur) * v
    if solver == 'heun':
      v2 = velocity_fn(x_next, jnp.full((batch,), t_next)).astype(jnp.float32)
      x_next = x + (t_next - t_cur) * 0.5 * (v + v2)
    return x_next, None

  x, _ = jax.lax.scan(step, noise.astype(jnp.float32), jnp.stack([ts[:-1], ts[1:]], axis=1))
  return x


def sde_sample(velocity_fn: VelocityFn, noise, keys, *, num_steps: int = 250,
               diffusion_norm: float = 1.0, sample_eps: float = 1e-3,
               last_step_size: float = 0.04) -> jax.Array:
  """Euler-Maruyama on SiT's reverse SDE, from x = noise at t = 1 - sample_eps to t = 0.

  The SDE keeps the ODE's marginals: dx = [v - D(t) score] dt + sqrt(2 D(t)) dW backwards in
  t, with SiT's default diffusion D(t) = diffusion_norm * t / (1 - t) (its "SBDM" form; it is
  infinite at pure noise, hence the start just below t = 1). `num_steps` points from the start
  to t = last_step_size (num_steps - 1 noisy steps, as SiT's grid), then one noiseless step of
  the SDE's drift to t = 0 (SiT's "Mean" last step). `keys` (batch,) are per-sample PRNG keys;
  the noise of sample b at step i is normal(fold_in(keys[b], i)), so a sample does not depend
  on the batch it runs in.
  """
  if num_steps < 2:
    raise ValueError(f'num_steps must be at least 2, got {num_steps}')
  if not 0.0 <= last_step_size < 1.0 - sample_eps:
    raise ValueError(f'last_step_size must be in [0, 1 - sample_eps), got {last_step_size}')
  batch, shape = noise.shape[0], noise.shape[1:]
  ts = jnp.linspace(1.0 - sample_eps, last_step_size, num_steps, dtype=jnp.float32)

  def drift(x, t):   # dx/dt of the reverse SDE, in the noise-level time t
    tb = jnp.full((batch,), t)
    v = velocity_fn(x, tb).astype(jnp.float32)
    return v - diffusion_norm * t / (1.0 - t) * score_from_velocity(v, x, tb)

  def step(x, inputs):
    i, t_cur, t_next = inputs
    h = t_cur - t_next
    z = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, i), shape))(keys)
    d = diffusion_norm * t_cur / (1.0 - t_cur)
    return x - h * drift(x, t_cur) + jnp.sqrt(2.0 * d * h) * z, None

  steps = (jnp.arange(num_steps - 1, dtype=jnp.int32), ts[:-1], ts[1:])
  x, _ = jax.lax.scan(step, noise.astype(jnp.float32), steps)
  return x - last_step_size * drift(x, ts[-1])
