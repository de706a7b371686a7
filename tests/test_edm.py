"""EDM math and samplers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffdis_jax.diffusion import edm, samplers


def test_preconditioning_equals_closed_form():
  sigma = np.array([0.002, 0.1, 0.5, 1.0, 7.0, 80.0])
  sd = 0.5
  c_skip, c_out, c_in, c_noise = map(np.asarray, edm.preconditioning(jnp.asarray(sigma), sd))
  np.testing.assert_allclose(c_skip, sd ** 2 / (sigma ** 2 + sd ** 2), rtol=1e-6)
  np.testing.assert_allclose(c_out, sigma * sd / np.sqrt(sigma ** 2 + sd ** 2), rtol=1e-6)
  np.testing.assert_allclose(c_in, 1 / np.sqrt(sd ** 2 + sigma ** 2), rtol=1e-6)
  np.testing.assert_allclose(c_noise, np.log(sigma) / 4, rtol=1e-6)
  # EDM's design rules: unit-variance input, and the effective target has unit variance
  np.testing.assert_allclose(c_in ** 2 * (sd ** 2 + sigma ** 2), 1.0, rtol=1e-6)
  np.testing.assert_allclose(
      (sd ** 2 * (1 - c_skip) ** 2 + c_skip ** 2 * sigma ** 2) / c_out ** 2, 1.0, rtol=1e-5)
  np.testing.assert_allclose(edm.loss_weight(sigma, sd), 1 / c_out ** 2, rtol=1e-6)


def test_lognormal_sigma_statistics():
  s = edm.sample_sigma(jax.random.PRNGKey(0), 200_000, -1.2, 1.2)
  logs = np.log(np.asarray(s))
  assert abs(logs.mean() + 1.2) < 0.01 and abs(logs.std() - 1.2) < 0.01


def test_karras_grid():
  grid = np.asarray(edm.karras_sigmas(18))
  assert grid.shape == (18,)
  np.testing.assert_allclose([grid[0], grid[-1]], [80.0, 0.002], rtol=1e-5)
  assert np.all(np.diff(grid) < 0)
  i = np.arange(18)
  ref = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
  np.testing.assert_allclose(grid, ref, rtol=1e-5)


def test_teacher_sigma_policies():
  sigma = jnp.array([0.001, 0.01, 0.5, 3.0, 100.0])
  grid = np.asarray(edm.karras_sigmas(18))
  nxt = np.asarray(edm.teacher_sigma(sigma, 'karras_next', grid_steps=18))
  assert nxt[0] == pytest.approx(0.001)         # below the grid: unchanged
  for s, t in zip(np.asarray(sigma)[1:], nxt[1:]):
    assert t < s and np.isclose(grid, t).any()  # strictly cleaner, on the grid
    assert not ((grid < s) & (grid > t)).any()  # and the closest such point
  np.testing.assert_allclose(edm.teacher_sigma(sigma, 'scale', scale=0.25), sigma * 0.25)
  np.testing.assert_allclose(edm.teacher_sigma(sigma, 'fixed', fixed=0.1), 0.1)
  np.testing.assert_allclose(edm.teacher_sigma(sigma, 'equal'), sigma)
  with pytest.raises(ValueError, match='unknown teacher sigma policy'):
    edm.teacher_sigma(sigma, 'nope')


@pytest.mark.parametrize('solver,steps', [('heun', 32), ('euler', 256)])
def test_sampler_with_exact_gaussian_denoiser_recovers_the_data_distribution(solver, steps):
  """For data N(mu, s^2) the exact denoiser is mu + s^2 / (s^2 + sigma^2) (x - mu); the ODE
  must carry N(0, sigma_max^2) noise to (very nearly) N(mu, s^2)."""
  mu = jnp.array([1.5, -0.5, 0.0])
  s = jnp.array([0.3, 1.0, 2.0])

  def denoiser(x, sigma):
    sig = sigma[:, None]
    return mu + s ** 2 / (s ** 2 + sig ** 2) * (x - mu)

  noise = jax.random.normal(jax.random.PRNGKey(0), (20_000, 3))
  x = jax.jit(lambda n: samplers.edm_sample(denoiser, n, num_steps=steps, solver=solver))(noise)
  np.testing.assert_allclose(x.mean(0), mu, atol=0.03)
  np.testing.assert_allclose(x.std(0), s, rtol=0.03)


def test_classifier_free_guidance_combines_denoiser_outputs():
  def denoise(x, sigma, labels):
    return x * 0 + labels[:, None].astype(jnp.float32)  # "predicts" its label

  x, sigma, labels = jnp.zeros((4, 2)), jnp.ones((4,)), jnp.array([1, 2, 3, 4])
  assert np.all(samplers.classifier_free_guidance(denoise, labels, 10, 1.0)(x, sigma)
                == labels[:, None])
  out = samplers.classifier_free_guidance(denoise, labels, 10, 1.5)(x, sigma)
  np.testing.assert_allclose(out, jnp.broadcast_to(10 + 1.5 * (labels[:, None] - 10), (4, 2)))
