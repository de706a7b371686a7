"""SiT's linear interpolant (diffusion/flow.py) on Gaussian data, whose velocity field is known
in closed form: the ODE samplers against the exact end point (and their order of accuracy),
the SDE sampler against the data's moments, guidance against the guided Gaussian's end point."""
import jax
import jax.numpy as jnp
import numpy as np

from diffdis_jax.diffusion import flow, samplers

MU, STD = 0.7, 0.5


def gaussian_velocity(mu, std):
  """E[noise - x0 | x_t] for x0 ~ N(mu, std^2) per element, noise ~ N(0, 1):
  (t - (1 - t) std^2) / V * (x - (1 - t) mu) - mu, with V = (1 - t)^2 std^2 + t^2."""
  def fn(x, t):
    t = t.reshape((-1,) + (1,) * (x.ndim - 1))
    var = (1 - t) ** 2 * std ** 2 + t ** 2
    return (t - (1 - t) * std ** 2) / var * (x - (1 - t) * mu) - mu
  return fn


def _noise(batch=8, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), (batch, 2, 2, 3))


def _ode_error(solver, steps):
  noise = _noise()
  x = flow.ode_sample(gaussian_velocity(MU, STD), noise, num_steps=steps, solver=solver)
  # the flow keeps quantiles: x_t = (1 - t) mu + sqrt(V_t) z, so noise z ends at mu + std z
  return float(jnp.max(jnp.abs(x - (MU + STD * noise))))


def test_ode_samplers_reach_the_exact_end_point_at_their_order():
  # (a float64 numpy run of the same grids: Euler 1.7e-2, 8.6e-3; Heun 1.2e-3, 3.2e-4)
  euler = [_ode_error('euler', n) for n in (100, 200)]
  heun = [_ode_error('heun', n) for n in (20, 40)]
  assert euler[1] < 1.2e-2 and heun[1] < 5e-4, (euler, heun)
  assert 1.8 < euler[0] / euler[1] < 2.2, euler   # first order
  assert 3.4 < heun[0] / heun[1] < 4.4, heun      # second order


def test_sde_sampler_reaches_the_data_distribution():
  batch = 2048
  noise = jax.random.normal(jax.random.PRNGKey(1), (batch, 2, 2, 2))
  keys = jax.random.split(jax.random.PRNGKey(2), batch)
  x = np.asarray(flow.sde_sample(gaussian_velocity(MU, STD), noise, keys, num_steps=250))
  # 16,384 draws: standard errors 0.004 (mean) and 0.003 (std)
  assert abs(x.mean() - MU) < 0.02 and abs(x.std() - STD) < 0.02, (x.mean(), x.std())
  # and not the ODE's end point of the same noise: the SDE's own noise moved it
  assert np.abs(x - (MU + STD * np.asarray(noise))).mean() > 0.1
  # a sample does not depend on its batch
  part = flow.sde_sample(gaussian_velocity(MU, STD), noise[:3], keys[:3], num_steps=250)
  np.testing.assert_allclose(np.asarray(part), x[:3], rtol=1e-5, atol=1e-5)


def test_guidance_is_dits_on_the_velocity():
  """The Gaussian's velocity is affine in mu, so guiding between mu_c and mu_u is exactly the
  velocity of mu_u + w (mu_c - mu_u); DiT guides the first `channels` channels only, the others
  keep the conditional model's."""
  mu_c, mu_u, w = 1.0, -0.5, 2.5

  def velocity(x, t, labels):
    mu = jnp.where(labels[:, None, None, None] == 1, mu_c, mu_u)
    return gaussian_velocity(mu, STD)(x, t)

  noise = _noise()
  labels = jnp.ones((noise.shape[0],), jnp.int32)
  guided = samplers.classifier_free_guidance(velocity, labels, null_label=0, scale=w, channels=2)
  x = flow.ode_sample(guided, noise, num_steps=40, solver='heun')
  want_guided = mu_u + w * (mu_c - mu_u) + STD * noise
  np.testing.assert_allclose(x[..., :2], want_guided[..., :2], atol=1e-3)
  np.testing.assert_allclose(x[..., 2:], (mu_c + STD * noise)[..., 2:], atol=1e-3)


def test_path_target_and_times():
  x0, noise = _noise(seed=3), _noise(seed=4)
  t = jnp.linspace(0.0, 1.0, 8)
  np.testing.assert_allclose(flow.interpolate(x0, noise, jnp.zeros(8)), x0)
  np.testing.assert_allclose(flow.interpolate(x0, noise, jnp.ones(8)), noise)
  _, dxdt = jax.jvp(lambda s: flow.interpolate(x0, noise, s), (t,), (jnp.ones(8),))
  np.testing.assert_allclose(dxdt, flow.velocity_target(x0, noise), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(flow.velocity_loss(flow.velocity_target(x0, noise), x0, noise),
                             np.zeros(8))
  u = flow.sample_t(jax.random.PRNGKey(0), 20000)
  assert 0 <= float(u.min()) and float(u.max()) < 1 and abs(float(u.mean()) - 0.5) < 0.01
  ln = flow.sample_t(jax.random.PRNGKey(0), 20000, 'logit_normal', mean=0.5, std=0.8)
  logit = np.log(ln / (1 - ln))
  assert abs(logit.mean() - 0.5) < 0.03 and abs(logit.std() - 0.8) < 0.03
