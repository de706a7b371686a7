"""Discrete-time DDPM/DDIM math: pure functions, no models. Stable Diffusion's schedule
(DiffDis) first; facebookresearch/DiT's respaced, learned-variance DDPM (its released
weights) at the end.

Timesteps are integer indices 0 .. T-1 into `alphas_cumprod`, as in diffusers; the UNet's time
embedding receives the same index. `scale` multiplies the clean signal in the forward process
(DiffDis's gamma on the text query: x_t = scale * sqrt(abar_t) * x_0 + sqrt(1 - abar_t) * eps);
the samplers work on the state x_t, whose clean end is scale * x_0.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

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


# ------------------------------------------------------------------ DiT's learned-variance DDPM
#
# facebookresearch/DiT (after ADM's improved DDPM) trains on a linear beta schedule of 1,000
# steps, predicts epsilon in its first C output channels and, in the other C, a value v in
# [-1, 1] that interpolates the log-variance between the posterior's (the smallest sensible
# one) and beta (the largest): the "learned range". It samples on a *respaced* schedule: K of
# the T steps, whose betas are recomputed so that the kept steps keep their alphas_cumprod.
# The model still sees the original step index. Below, a schedule's arrays are float64 numpy
# constants (as DiT builds them) read into float32 at the steps used (as DiT's extraction
# does); t always indexes the respaced steps 0 .. K-1.

RESPACED_SOLVERS = ('ancestral', 'ddim')
NUM_TIMESTEPS = 1000   # DiT's training schedule


class Schedule(NamedTuple):
  """A (respaced) DDPM schedule; every array has one entry per kept step, ascending."""
  timesteps: np.ndarray             # int64 (K,): the original step index the model is given
  betas: np.ndarray                 # float64 (K,): 1 - abar_k / abar_{k-1} of the kept steps
  alphas_cumprod: np.ndarray
  alphas_cumprod_prev: np.ndarray   # abar of the step before (1 before the first)
  posterior_log_variance: np.ndarray  # log q(x_{k-1} | x_k, x_0)'s variance, first entry
                                      # replaced by the second's (it is 0 there)
  posterior_mean_coef_x0: np.ndarray
  posterior_mean_coef_xt: np.ndarray


def space_timesteps(num_timesteps: int, respacing: str) -> np.ndarray:
  """The kept original steps (ascending int64) of DiT's respacing strings.

  '' keeps all; 'ddimN' takes every s-th step from 0 for the integer stride s giving exactly
  N steps; 'N' (or 'N1,N2,...') splits 0 .. T-1 into equal sections and takes N_i steps evenly
  spaced over section i, both ends included, rounding the fractional positions as Python
  does (half to even), so '250' keeps DiT's very steps.
  """
  T = num_timesteps
  if not respacing:
    return np.arange(T, dtype=np.int64)
  if respacing.startswith('ddim'):
    count = _positive(respacing[len('ddim'):], respacing)
    for stride in range(1, T + 1):  # DiT stops at T - 1, which refuses 'ddim1'
      if len(range(0, T, stride)) == count:
        return np.arange(0, T, stride, dtype=np.int64)
    raise ValueError(f'respacing {respacing!r}: no integer stride gives exactly {count} of '
                     f'{T} steps')
  counts = [_positive(part, respacing) for part in respacing.split(',')]
  size, extra = divmod(T, len(counts))
  if size == 0:
    raise ValueError(f'respacing {respacing!r} has more sections than the {T} steps')
  steps, start = [], 0
  for i, count in enumerate(counts):
    section = size + (1 if i < extra else 0)
    if count > section:
      raise ValueError(f'respacing {respacing!r}: {count} steps do not fit a section of '
                       f'{section}')
    stride = 1.0 if count <= 1 else (section - 1) / (count - 1)
    steps += [start + round(j * stride) for j in range(count)]
    start += section
  return np.asarray(sorted(set(steps)), np.int64)


def _positive(text: str, respacing: str) -> int:
  if not text.strip().isdigit() or int(text) < 1:
    raise ValueError(f"respacing {respacing!r}: expected '', 'N', 'N1,N2,...' or 'ddimN' "
                     'with positive integers N')
  return int(text)


def respaced_schedule(respacing: str, num_timesteps: int = NUM_TIMESTEPS) -> Schedule:
  """DiT's schedule (linear betas 1e-4 .. 0.02 at T = 1000, scaled by 1000 / T otherwise, as
  its `get_named_beta_schedule`) respaced to the steps `respacing` keeps, e.g. '250' (the
  paper's FID-50K sampler) or 'ddim25'."""
  scale = 1000 / num_timesteps
  full = np.cumprod(1.0 - betas(num_timesteps, scale * 1e-4, scale * 0.02, 'linear'))
  kept = space_timesteps(num_timesteps, respacing)
  abar = full[kept]
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  beta = 1.0 - abar / abar_prev
  posterior_variance = beta * (1.0 - abar_prev) / (1.0 - abar)
  # the first step's posterior variance is 0 (x_0 is determined): its log would be -inf, so
  # DiT uses the next step's there; a single-step schedule has no next step and keeps beta's
  clipped = np.concatenate([posterior_variance[1:2] if len(kept) > 1 else beta[:1],
                            posterior_variance[1:]])
  return Schedule(timesteps=kept, betas=beta, alphas_cumprod=abar, alphas_cumprod_prev=abar_prev,
                  posterior_log_variance=np.log(clipped),
                  posterior_mean_coef_x0=beta * np.sqrt(abar_prev) / (1.0 - abar),
                  posterior_mean_coef_xt=(1.0 - abar_prev) * np.sqrt(1.0 - beta) / (1.0 - abar))


def _at(array: np.ndarray, t, like):
  """array[t] as float32, broadcast against `like` (batch, ...)."""
  return _expand(jnp.asarray(array, jnp.float32)[t], like)


def split_learned_range(model_output):
  """(eps, v) of an NHWC output of 2C channels: epsilon, then the variance interpolation."""
  return jnp.split(model_output.astype(jnp.float32), 2, axis=-1)


def predict_x0(schedule: Schedule, eps, x_t, t):
  """x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t), at respaced steps t (batch,)."""
  abar = _at(schedule.alphas_cumprod, t, x_t)
  return (x_t.astype(jnp.float32) - jnp.sqrt(1.0 - abar) * eps) / jnp.sqrt(abar)


def p_mean_variance(schedule: Schedule, model_output, x_t, t):
  """(mean, log-variance) of p(x_{t-1} | x_t) for DiT's learned-range output.

  `model_output` is NHWC with twice the channels of x_t (epsilon, then v in [-1, 1]); t
  (batch,) indexes the respaced steps. The mean is the posterior q(x_{t-1} | x_t, x0) at the
  predicted x0 (unclipped, as DiT samples latents); the log-variance is
  (v + 1) / 2 * log(beta_t) + (1 - v) / 2 * log(posterior variance_t). Both float32.
  """
  eps, v = split_learned_range(model_output)
  x_t = x_t.astype(jnp.float32)
  x0 = predict_x0(schedule, eps, x_t, t)
  mean = (_at(schedule.posterior_mean_coef_x0, t, x_t) * x0
          + _at(schedule.posterior_mean_coef_xt, t, x_t) * x_t)
  return mean, learned_log_variance(schedule, v, t)


def learned_log_variance(schedule: Schedule, v, t):
  """(v + 1) / 2 * log(beta_t) + (1 - v) / 2 * log(posterior variance_t), float32."""
  frac = (v.astype(jnp.float32) + 1.0) / 2.0
  return (frac * _at(np.log(schedule.betas), t, v)
          + (1.0 - frac) * _at(schedule.posterior_log_variance, t, v))


def ancestral_step(schedule: Schedule, model_output, x_t, t, noise):
  """x_{t-1} = mean + exp(log-variance / 2) * noise, with no noise at the last step (t = 0)."""
  mean, log_variance = p_mean_variance(schedule, model_output, x_t, t)
  return mean + _expand((t != 0).astype(jnp.float32), x_t) * jnp.exp(0.5 * log_variance) * noise


def learned_ddim_step(schedule: Schedule, model_output, x_t, t):
  """Deterministic DDIM (eta 0) on the respaced schedule from the output's epsilon (the
  variance half is unused); t = 0 goes to abar = 1, i.e. returns the x0 estimate."""
  eps, _ = split_learned_range(model_output)
  x0 = predict_x0(schedule, eps, x_t, t)
  return ddim_step(x0, eps, _at(schedule.alphas_cumprod_prev, t, x_t))


# model_fn(x_t, timesteps) -> NHWC output of 2C channels; timesteps are the original int32
# step indices (batch,), i.e. schedule.timesteps at the respaced step
LearnedRangeFn = Callable[[jax.Array, jax.Array], jax.Array]


def sample_learned_range(model_fn: LearnedRangeFn, x_T, schedule: Schedule, keys,
                         solver: str = 'ancestral') -> jax.Array:
  """DiT's sampling loop: from x_T down every respaced step to x_0, as one lax.scan.

  `keys` (batch,) are per-sample PRNG keys; the ancestral noise of sample b at respaced step
  t is normal(fold_in(keys[b], t)), so a sample does not depend on the batch it runs in.
  """
  if solver not in RESPACED_SOLVERS:
    raise ValueError(f'solver must be one of {RESPACED_SOLVERS}, got {solver!r}')
  batch, shape = x_T.shape[0], x_T.shape[1:]
  model_steps = jnp.asarray(schedule.timesteps, jnp.int32)

  def body(x, t):
    ts = jnp.full((batch,), t, jnp.int32)
    out = model_fn(x, model_steps[ts])
    if solver == 'ddim':
      return learned_ddim_step(schedule, out, x, ts), None
    noise = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, t), shape))(keys)
    return ancestral_step(schedule, out, x, ts, noise), None

  steps = jnp.arange(len(schedule.timesteps) - 1, -1, -1, dtype=jnp.int32)
  x, _ = jax.lax.scan(body, x_T.astype(jnp.float32), steps)
  return x


# ------------------------------------------------------------------ DiT's training loss
#
# DiT trains on respaced_schedule('') (all 1,000 steps) with uniform t: an MSE on epsilon plus
# the variational-bound term in bits per dimension, which trains the variance alone (the
# epsilon half enters it through a stop-gradient, DiT's `frozen_out`). At t = 0 the bound term
# is the decoder's negative log-likelihood of x_0 under a Gaussian discretised to the 256
# levels of an 8-bit image, with DiT's tanh approximation of the normal CDF.

def gaussian_kl(mean_gap, log_ratio, log_var2):
  """KL(N(m1, v1) || N(m2, v2)) elementwise in nats, from mean_gap = m1 - m2, log_ratio =
  log(v2 / v1) and log v2: 0.5 * (log_ratio + expm1(-log_ratio) + mean_gap^2 / v2).

  Written with the gap and the ratio rather than the four moments: where q and p nearly agree
  (t near T, where beta and the posterior variance meet) -1 + x + exp(-x) in float32 would
  lose a large share of a KL of ~1e-3.
  """
  return 0.5 * (log_ratio + jnp.expm1(-log_ratio) + mean_gap ** 2 * jnp.exp(-log_var2))


def approx_standard_normal_cdf(x):
  """The tanh approximation of the standard normal CDF that DiT's likelihood uses."""
  return 0.5 * (1.0 + jnp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
  """log P(x) in nats, elementwise, for x in [-1, 1] on the 256 levels of an 8-bit image: the
  Gaussian's mass over x's bin of half-width 1/255, with the end bins open to +-infinity."""
  return _discretized_log_likelihood(x, x - means, log_scales)


def _discretized_log_likelihood(x, centered, log_scales):
  """The same, given centered = x - means (which may be computed more accurately than by
  subtracting two nearly equal numbers)."""
  inv_std = jnp.exp(-log_scales)
  cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
  cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
  log_cdf_plus = jnp.log(jnp.maximum(cdf_plus, 1e-12))
  log_one_minus_cdf_min = jnp.log(jnp.maximum(1.0 - cdf_min, 1e-12))
  log_delta = jnp.log(jnp.maximum(cdf_plus - cdf_min, 1e-12))
  return jnp.where(x < -0.999, log_cdf_plus,
                   jnp.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def _mean_flat(x):
  return jnp.mean(x, axis=tuple(range(1, x.ndim)))


def training_losses(schedule: Schedule, model_output, x_start, t, noise) -> dict:
  """DiT's per-sample training losses {'mse', 'vb', 'loss'} (each (batch,), float32).

  NHWC `x_start` and `noise`; `model_output` has 2C channels (epsilon, then the variance
  value v in [-1, 1]); t (batch,) indexes the schedule's steps. mse is the mean squared error
  of epsilon; vb is KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)) in bits per dimension, or at
  t = 0 the decoder's NLL; the epsilon half is held fixed inside vb, so vb's gradient reaches
  the variance channels only. loss = mse + vb.
  """
  terms = training_loss_terms(schedule, model_output, x_start, t, noise)
  mse, vb = _mean_flat(terms['mse']), _mean_flat(terms['vb'])
  return {'mse': mse, 'vb': vb, 'loss': mse + vb}


def training_loss_terms(schedule: Schedule, model_output, x_start, t, noise) -> dict:
  """training_losses' two terms per element (NHWC, x_start's channels), before the mean over
  each sample's elements: a loss that averages over parts of an image (SD-DiT's patches)
  takes these.

  The two means differ only through x_0's estimate: q's mean minus p's is
  coef_x0 * (x_0 - x0_hat) = coef_x0 * sqrt(1 - abar) / sqrt(abar) * (eps - noise). Computed
  so rather than as the difference of the two means (as DiT does), it keeps float32's
  precision where the means are close (small t) or large (t near T): the subtraction loses
  up to 5e-5 of vb there. At t = 0 (coef_x0 = 1, coef_xt = 0) it is also x_0 minus the
  decoder's mean.
  """
  x_start = x_start.astype(jnp.float32)
  noise = noise.astype(jnp.float32)
  eps, v = split_learned_range(model_output)
  abar = schedule.alphas_cumprod
  gap_coef = schedule.posterior_mean_coef_x0 * np.sqrt(1.0 - abar) / np.sqrt(abar)
  mean_gap = _at(gap_coef, t, x_start) * (jax.lax.stop_gradient(eps) - noise)
  log_variance = learned_log_variance(schedule, v, t)
  # p's log-variance minus q's (the clipped posterior's) is (v + 1) / 2 * log(beta / post)
  log_ratio = (v.astype(jnp.float32) + 1.0) / 2.0 * _at(
      np.log(schedule.betas) - schedule.posterior_log_variance, t, x_start)
  kl = gaussian_kl(mean_gap, log_ratio, log_variance)
  decoder_nll = -_discretized_log_likelihood(x_start, mean_gap, 0.5 * log_variance)
  vb = jnp.where(_expand(t, x_start) == 0, decoder_nll, kl) / np.log(2.0)
  return {'mse': (noise - eps) ** 2, 'vb': vb}
