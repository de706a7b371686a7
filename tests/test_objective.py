"""The objective interface (diffusion/objective.py): each objective's path is x0 + sigma n up
to a per-sample scale, its teacher level is lower on that path by edm.teacher_sigma's policy,
and its per-element loss is its own module's loss."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffdis_jax.diffusion import ddpm, edm, flow
from diffdis_jax.diffusion import objective as objective_lib

OBJECTIVES = [objective_lib.EDM(), objective_lib.DDPM(), objective_lib.Flow(),
              objective_lib.Flow(t_distribution='logit_normal')]


def _data(seed=0, shape=(8, 4, 4, 2)):
  k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
  return jax.random.uniform(k1, shape, minval=-1, maxval=1), jax.random.normal(k2, shape)


def _scale(obj, level):
  """The per-sample factor of x0 on the path: 1 (EDM), sqrt(abar_t) (DDPM), 1 - t (flow)."""
  if obj.name == 'edm':
    return jnp.ones_like(level, jnp.float32)
  if obj.name == 'ddpm':
    return jnp.sqrt(jnp.asarray(obj.schedule.alphas_cumprod, jnp.float32)[level])
  return 1.0 - level


@pytest.mark.parametrize('obj', OBJECTIVES, ids=lambda o: f'{o.name}')
def test_paths_are_edms_ray_and_the_teacher_is_lower_on_it(obj):
  x0, noise = _data()
  level = obj.sample_level(jax.random.PRNGKey(1), x0.shape[0])
  x = obj.noisy(x0, noise, level)
  sigma = obj.to_sigma(level)
  np.testing.assert_allclose(x / edm.per_sample(_scale(obj, level), x),
                             x0 + edm.per_sample(sigma, x0) * noise, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(obj.from_sigma(sigma), level, rtol=1e-6)   # levels round-trip
  for policy in ('karras_next', 'scale', 'fixed', 'equal'):
    lower = obj.teacher_level(level, objective_lib.TeacherPolicy(policy=policy))
    want = edm.teacher_sigma(sigma, policy)
    got = obj.to_sigma(lower)
    if obj.name == 'ddpm':   # the step at or below the wanted sigma (step 0 below the grid)
      sig = obj.to_sigma(jnp.arange(1000))
      assert np.all((got <= want) | (lower == 0))
      assert np.all(sig[jnp.minimum(lower + 1, 999)] > want)
    else:
      np.testing.assert_allclose(got, want, rtol=1e-5)
    if policy == 'equal':
      np.testing.assert_allclose(lower, level, rtol=1e-6)


def test_each_loss_is_its_modules_loss():
  x0, noise = _data(seed=2)
  b = x0.shape[0]
  out = jax.random.normal(jax.random.PRNGKey(3), x0.shape)
  mean = lambda a: a.mean(axis=(1, 2, 3))
  # EDM: lambda(sigma) * |D - x0|^2 with D = c_skip x + c_out F
  e = objective_lib.EDM()
  sigma = e.sample_level(jax.random.PRNGKey(4), b)
  x = e.noisy(x0, noise, sigma)
  denoised = edm.denoise(lambda _, __: out, x, sigma)
  np.testing.assert_allclose(e.element_loss(out, x, x0, noise, sigma),
                             edm.per_sample(edm.loss_weight(sigma), x0) * (denoised - x0) ** 2,
                             rtol=1e-6)
  # DDPM: mean over elements is DiT's mse + vb
  d = objective_lib.DDPM()
  t = d.sample_level(jax.random.PRNGKey(5), b).at[0].set(0)
  out2 = jnp.concatenate([out, jnp.tanh(out)], axis=-1)
  want = ddpm.training_losses(d.schedule, out2, x0, t, noise)['loss']
  np.testing.assert_allclose(mean(d.element_loss(out2, d.noisy(x0, noise, t), x0, noise, t)),
                             want, rtol=1e-5)
  # flow: the velocity's squared error
  f = objective_lib.Flow()
  t = f.sample_level(jax.random.PRNGKey(6), b)
  np.testing.assert_allclose(mean(f.element_loss(out, f.noisy(x0, noise, t), x0, noise, t)),
                             flow.velocity_loss(out, x0, noise), rtol=1e-6)
  with pytest.raises(ValueError, match='objective must be one of'):
    objective_lib.build('vp')


@pytest.mark.parametrize('name', ['ddpm', 'flow'])
def test_sddit_loss_runs_its_pairs_on_the_objectives_path(name):
  """SD-DiT on DDPM and flow: a finite loss whose gradient reaches the student and never the
  teacher, and a teacher view at most as noisy as the student's (karras_next)."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from conftest import compile_fast, tiny_sddit_config  # pylint: disable=g-import-not-at-top
  from diffdis_jax.objectives import sddit  # pylint: disable=g-import-not-at-top
  from diffdis_jax.tasks import make_task  # pylint: disable=g-import-not-at-top
  config = tiny_sddit_config(**{'objective': name, 'model.learn_sigma': name == 'ddpm',
                                'batch_size': 16})
  task = make_task(config)
  model = task.build_model()
  params = compile_fast(lambda r: nn.unbox(task.init_params(model, r)),
                        jax.random.PRNGKey(0))(jax.random.PRNGKey(0))
  params = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.PRNGKey(1), p.shape),
                        params)
  aux = sddit.init_aux(params, model, config)
  batch = {'image': jax.random.uniform(jax.random.PRNGKey(2), (16, 8, 8, 1), minval=-1,
                                       maxval=1), 'label': jnp.arange(16) % 10}

  def loss(p, a):
    value, (metrics, _) = sddit.loss_fn(p, batch, jax.random.PRNGKey(3), a, 0, model=model,
                                        config=config)
    return value, metrics
  (value, metrics), (g_params, g_aux) = compile_fast(
      jax.value_and_grad(loss, argnums=(0, 1), has_aux=True), params, aux)(params, aux)
  assert np.isfinite(float(value)) and float(metrics['dis_loss']) > 0
  assert float(metrics['sigma_teacher']) <= float(metrics['sigma_student'])
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(g_aux['teacher']))
  assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g_params['blocks_0'])) > 0
