"""A training objective as one small interface: EDM, DiT's DDPM and SiT's flow behind it.

An objective draws a per-sample noise level, makes the noisy input on its path, preconditions
the network's input and time, turns the network's output into a per-element loss (its target
and weight included), and gives the point of the same path at a lower noise. A loss (SD-DiT's,
MaskDiT's, DiT's) calls these and never asks which objective it holds.

Every path here is, up to a per-sample scale, x0 + sigma * noise (EDM's), so a level has an
EDM-equivalent sigma: DDPM's sqrt((1 - abar_t) / abar_t), flow's t / (1 - t). The teacher's
lower level is chosen on that sigma by edm.teacher_sigma's policies and mapped back, so a
policy reads alike on every objective.
"""
from __future__ import annotations

import abc
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffdis_jax.diffusion import ddpm, edm, flow, samplers

NAMES = ('edm', 'ddpm', 'flow')


@dataclasses.dataclass(frozen=True)
class TeacherPolicy:
  """edm.teacher_sigma's policy and its knobs."""
  policy: str = 'karras_next'
  grid_steps: int = 18
  scale: float = 0.5
  fixed: float = 0.05


class Objective(abc.ABC):
  """The interface. `level` is (batch,): sigma (EDM), a step index (DDPM) or t (flow)."""

  name = ''
  learn_sigma = False   # whether the network must output a variance half
  solvers: tuple = ()   # the samplers that belong to it (sample.solver's values)
  default_solver = ''   # the one an empty sample.solver means

  @abc.abstractmethod
  def sample_level(self, rng, batch: int):
    """Training levels (batch,) drawn from the objective's distribution."""

  @abc.abstractmethod
  def noisy(self, x0, noise, level):
    """The point of the path at `level` for clean x0 and standard normal noise."""

  @abc.abstractmethod
  def net_inputs(self, x, level):
    """(network input, network time) of the preconditioned network at (x, level)."""

  @abc.abstractmethod
  def element_loss(self, net_out, x, x0, noise, level):
    """Per-element loss, NHWC with x0's channels: its mean over elements is the loss."""

  @abc.abstractmethod
  def to_sigma(self, level):
    """The EDM-equivalent sigma of `level`: its path divided by x0's scale is x0 + sigma n."""

  @abc.abstractmethod
  def from_sigma(self, sigma):
    """The level whose EDM-equivalent sigma is sigma (for DDPM, the nearest step at or below
    it, step 0 below the schedule)."""

  def teacher_level(self, level, policy: TeacherPolicy):
    """A level at lower noise on the same path, by the policy applied to the EDM sigma."""
    sigma = edm.teacher_sigma(self.to_sigma(level), policy.policy, grid_steps=policy.grid_steps,
                              scale=policy.scale, fixed=policy.fixed)
    return self.from_sigma(sigma)


@dataclasses.dataclass(frozen=True)
class EDM(Objective):
  """Karras et al.'s: ln sigma ~ N(p_mean, p_std^2), x = x0 + sigma n, the preconditioned
  denoiser D = c_skip x + c_out F against x0, weighted by lambda(sigma)."""
  sigma_data: float = 0.5
  p_mean: float = -1.2
  p_std: float = 1.2
  name = 'edm'
  solvers, default_solver = samplers.SOLVERS, 'heun'

  def sample_level(self, rng, batch):
    return edm.sample_sigma(rng, batch, self.p_mean, self.p_std)

  def noisy(self, x0, noise, level):
    return x0 + edm.per_sample(level, x0) * noise

  def net_inputs(self, x, level):
    _, _, c_in, c_noise = edm.preconditioning(level, self.sigma_data)
    return edm.per_sample(c_in, x) * x, c_noise

  def element_loss(self, net_out, x, x0, noise, level):
    c_skip, c_out, _, _ = edm.preconditioning(level, self.sigma_data)
    denoised = (edm.per_sample(c_skip, x0) * x
                + edm.per_sample(c_out, x0) * net_out.astype(jnp.float32))
    weight = edm.per_sample(edm.loss_weight(level, self.sigma_data), x0)
    return weight * (denoised - x0) ** 2

  def to_sigma(self, level):
    return level

  def from_sigma(self, sigma):
    return sigma


@dataclasses.dataclass(frozen=True)
class DDPM(Objective):
  """DiT's: uniform steps of respaced_schedule(''), an epsilon target with a learned-range
  variance, mse + vb (ddpm.training_losses, per element); the network sees x_t and the step."""
  respacing: str = ''
  name = 'ddpm'
  learn_sigma = True
  solvers, default_solver = ddpm.RESPACED_SOLVERS, 'ancestral'   # DiT's FID sampler

  @property
  def schedule(self) -> ddpm.Schedule:
    return _schedule(self.respacing)

  def sample_level(self, rng, batch):
    return ddpm.sample_timesteps(rng, batch, len(self.schedule.timesteps))

  def noisy(self, x0, noise, level):
    return ddpm.q_sample(x0, level, noise, jnp.asarray(self.schedule.alphas_cumprod, jnp.float32))

  def net_inputs(self, x, level):
    # the original step index, as a float: what DiT's sampler gives the same network
    return x, jnp.asarray(self.schedule.timesteps, jnp.float32)[level]

  def element_loss(self, net_out, x, x0, noise, level):
    del x   # the loss reads x_t through x0 and noise (ddpm.training_losses)
    terms = ddpm.training_loss_terms(self.schedule, net_out, x0, level, noise)
    return terms['mse'] + terms['vb']

  def _sigmas(self):
    abar = self.schedule.alphas_cumprod
    return jnp.asarray(np.sqrt((1.0 - abar) / abar), jnp.float32)   # ascending

  def to_sigma(self, level):
    return self._sigmas()[level]

  def from_sigma(self, sigma):
    below = jnp.searchsorted(self._sigmas(), sigma, side='right') - 1
    return jnp.maximum(below, 0).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Flow(Objective):
  """SiT's linear interpolant: t uniform or logit-normal, x = (1 - t) x0 + t n, the velocity
  n - x0 as target with weight 1; the network sees x_t and t."""
  t_distribution: str = 'uniform'
  t_mean: float = 0.0
  t_std: float = 1.0
  name = 'flow'
  solvers, default_solver = flow.SOLVERS, 'heun'   # SiT's ODE, at second order

  def sample_level(self, rng, batch):
    return flow.sample_t(rng, batch, self.t_distribution, self.t_mean, self.t_std)

  def noisy(self, x0, noise, level):
    return flow.interpolate(x0, noise, level)

  def net_inputs(self, x, level):
    return x, level

  def element_loss(self, net_out, x, x0, noise, level):
    del x, level
    return (net_out.astype(jnp.float32) - flow.velocity_target(x0, noise)) ** 2

  def to_sigma(self, level):
    return level / (1.0 - level)

  def from_sigma(self, sigma):
    return 1.0 / (1.0 + 1.0 / sigma)   # so sigma = inf (t = 1) maps back to 1, not nan


@functools.lru_cache(maxsize=4)
def _schedule(respacing: str) -> ddpm.Schedule:
  # float64 constants built once per program rather than at every trace of every call
  return ddpm.respaced_schedule(respacing)


def build(name: str, *, edm_fields=None, flow_fields=None) -> Objective:
  """The objective `name`, from plain fields (a config's `edm` and `flow` groups)."""
  if name == 'edm':
    return EDM(**dict(edm_fields or {}))
  if name == 'ddpm':
    return DDPM()
  if name == 'flow':
    return Flow(**dict(flow_fields or {}))
  raise ValueError(f'objective must be one of {NAMES}, got {name!r}')


def from_config(config) -> Objective:
  """The objective a model config trains on: `config.objective` ('edm' where a config
  predates the field), with its `edm` or `flow` group."""
  return build(config.get('objective', 'edm'), edm_fields=config.get('edm', None),
               flow_fields=config.get('flow', None))
