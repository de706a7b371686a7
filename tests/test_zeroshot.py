"""DiffDis inference: DDIM over the text query, guidance wiring, scores, R@K, t2i sampling,
and the SD schedule against diffusers."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffdis_jax.diffusion import ddpm
from diffdis_jax.eval import diffdis_sampler, zeroshot
from diffdis_testlib import CTX_DIM, CTX_LEN, SIDE, TEXT_DIM, random_params, tiny_config, \
    tiny_model

ABAR = ddpm.alphas_cumprod()


# ----------------------------------------------------------------------------- schedule


def test_schedule_and_ddim_match_diffusers():
  from diffusers import DDIMScheduler  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  kw = dict(beta_start=0.00085, beta_end=0.012, beta_schedule='scaled_linear',
            clip_sample=False, set_alpha_to_one=False, steps_offset=1)
  peer = DDIMScheduler(**kw)
  np.testing.assert_allclose(ABAR, peer.alphas_cumprod.numpy(), rtol=1e-5)
  for spacing in ('leading', 'trailing', 'linspace'):
    peer = DDIMScheduler(**kw, timestep_spacing=spacing)
    peer.set_timesteps(20)
    np.testing.assert_array_equal(ddpm.ddim_timesteps(1000, 20, spacing), peer.timesteps.numpy())
  # one DDIM step (eta 0) from t = 501 to 451 on epsilon and on v outputs
  rng = np.random.default_rng(0)
  x, out = rng.standard_normal((2, 2, 4, 4, 3)).astype(np.float32)
  for prediction in ('epsilon', 'v_prediction'):
    peer = DDIMScheduler(**kw, prediction_type=prediction)
    peer.set_timesteps(20)
    theirs = peer.step(torch.from_numpy(out), 501, torch.from_numpy(x)).prev_sample.numpy()
    x0, eps = ddpm.x0_and_eps(out, x, ABAR[501], prediction)
    np.testing.assert_allclose(ddpm.ddim_step(x0, eps, ABAR[451]), theirs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('prediction', ['epsilon', 'x0', 'v_prediction'])
def test_prediction_conversions_invert_the_forward_process(prediction):
  rng = np.random.default_rng(1)
  x0, noise = rng.standard_normal((2, 5, 6)).astype(np.float32)
  t = np.array([3, 300, 700, 999, 50])
  x_t = ddpm.q_sample(x0, t, noise, ABAR, scale=0.5)
  a = ABAR[t][:, None]
  out = {'epsilon': noise, 'x0': x0,
         'v_prediction': ddpm.v_target(x0, t, noise, ABAR, scale=0.5)}[prediction]
  got_x0, got_eps = ddpm.x0_and_eps(out, x_t, a, prediction, scale=0.5)
  np.testing.assert_allclose(got_x0, 0.5 * x0, rtol=1e-3, atol=2e-3)
  np.testing.assert_allclose(got_eps, noise, rtol=1e-3, atol=2e-3)


# ----------------------------------------------------------------------------- text DDIM


def _e0(batch=4, dim=16, seed=0):
  e = np.random.default_rng(seed).standard_normal((batch, dim)).astype(np.float32)
  return e / np.linalg.norm(e, axis=1, keepdims=True)


@pytest.mark.parametrize('prediction', ['x0', 'epsilon'])
def test_ddim_with_the_exact_denoiser_returns_e0(prediction):
  e0, gamma = _e0(), 0.5
  ts = ddpm.ddim_timesteps(1000, 25, 'trailing')
  if prediction == 'x0':
    denoise = lambda e_t, t: jnp.broadcast_to(e0, e_t.shape)
  else:   # the noise that makes e_t from gamma * e0
    denoise = lambda e_t, t: (e_t - gamma * jnp.sqrt(ABAR[t])[:, None] * e0) / jnp.sqrt(
        1 - ABAR[t])[:, None]
  noise = jax.random.normal(jax.random.PRNGKey(0), e0.shape)
  out = jax.jit(lambda n: diffdis_sampler.sample_text_query(denoise, n, ABAR, ts, gamma=gamma,
                                                     prediction=prediction))(noise)
  np.testing.assert_allclose(out, e0, atol=5e-5)


def test_ddim_follows_the_probability_flow_of_gaussian_data():
  """e_0 ~ N(mu, s^2 I): the exact x0-predictor is the posterior mean. With v_t = gamma^2
  abar_t s^2 + 1 - abar_t, the PF-ODE maps e_T to e_l = gamma sqrt(abar_l) mu + sqrt(v_l / v_T)
  (e_T - gamma sqrt(abar_T) mu) at the last timestep l, where the sampler returns the
  posterior mean mu + gamma sqrt(abar_l) s^2 / v_l (e_l - gamma sqrt(abar_l) mu).
  DDIM (Euler in sigma = sqrt((1 - abar) / abar)) is exact where sigma >> s and errs by a few
  per cent of the deviation from mu near sigma ~ s; a wrong gamma errs by a factor."""
  mu, s, gamma = _e0(1, 16)[0], 0.3, 0.5
  ts = ddpm.ddim_timesteps(1000, 200, 'trailing')
  v = lambda a: gamma ** 2 * a * s ** 2 + 1 - a

  def denoise(e_t, t):
    a = ABAR[t][:, None]
    return mu + gamma * jnp.sqrt(a) * s ** 2 / v(a) * (e_t - gamma * jnp.sqrt(a) * mu)

  noise = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (64, 16)))
  out = diffdis_sampler.sample_text_query(denoise, noise, ABAR, ts, gamma=gamma)
  a_T, a_l = ABAR[ts[0]], ABAR[ts[-1]]
  dev = jnp.sqrt(v(a_l) / v(a_T)) * (noise - gamma * jnp.sqrt(a_T) * mu)
  expected = mu + gamma * jnp.sqrt(a_l) * s ** 2 / v(a_l) * dev
  np.testing.assert_allclose(out - mu, expected - mu, rtol=0.04, atol=1e-3)


class _FakeTextModel:
  """predict_text returns `cond` for kept images and `uncond` for dropped ones (x0 output)."""
  text_dim = 16

  def __init__(self, cond, uncond):
    self.cond, self.uncond = cond, uncond

  def apply(self, variables, z, t, c, e_t, t_e, *, image_keep, method):
    assert method == 'predict_text' and c.shape[:2] == (z.shape[0], CTX_LEN)
    n = self.cond.shape[0]
    cond = jnp.tile(self.cond, (z.shape[0] // n, 1))
    uncond = jnp.tile(self.uncond, (z.shape[0] // n, 1))
    return jnp.where(image_keep[:, None], cond, uncond)


@pytest.mark.parametrize('guidance', [1.0, 3.0])
def test_query_predictor_guides_on_the_image_condition(guidance):
  cond, uncond = _e0(3, seed=1), _e0(3, seed=2)
  config = tiny_config(**{'zeroshot.guidance': guidance, 'zeroshot.steps': 5,
                          'zeroshot.seeds': 2, 'gamma': 0.7})
  predict = diffdis_sampler.make_query_predictor(_FakeTextModel(cond, uncond), config)
  z = np.zeros((3, 2, 2, 4), np.float32)
  out = predict(None, z, np.zeros((CTX_LEN, CTX_DIM)), jax.random.PRNGKey(0))
  expected = uncond + guidance * (cond - uncond)
  expected /= np.linalg.norm(expected, axis=1, keepdims=True)
  np.testing.assert_allclose(out, expected, atol=1e-4)


def test_query_predictor_runs_the_tiny_model():
  config = tiny_config(**{'zeroshot.steps': 2})
  predict = jax.jit(diffdis_sampler.make_query_predictor(tiny_model(), config))
  z = np.random.default_rng(0).standard_normal((2, SIDE, SIDE, 4)).astype(np.float32)
  out = np.asarray(predict(random_params(), z, np.zeros((CTX_LEN, CTX_DIM), np.float32),
                           jax.random.PRNGKey(0)))
  assert out.shape == (2, TEXT_DIM)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)


# ----------------------------------------------------------------------------- scores


def test_class_queries_ensemble_templates():
  table = {'a x': [3.0, 0.0], 'the x': [0.0, 1.0], 'a y': [0.0, -2.0], 'the y': [0.0, -1.0]}
  encode = lambda prompts: np.array([table[p] for p in prompts])
  q = zeroshot.class_queries(encode, ['x', 'y'], ['a {}', 'the {}'])
  np.testing.assert_allclose(q, [[np.sqrt(0.5), np.sqrt(0.5)], [0.0, -1.0]], rtol=1e-6)


def test_topk_accuracy_hand_case():
  scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.3, 0.5], [0.4, 0.5, 0.1]])
  out = zeroshot.topk_accuracy(scores, [0, 1, 2], ks=(1, 2, 5))
  assert out == {'zeroshot_top1': pytest.approx(1 / 3), 'zeroshot_top2': pytest.approx(2 / 3)}


def test_retrieval_recalls_hand_case():
  # 3 images, 4 captions; captions 0 and 1 describe image 0, caption 2 image 1, 3 image 2
  scores = np.array([[0.1, 0.8, 0.9, 0.0],    # image 0: its best own caption (1) ranks 2nd
                     [0.5, 0.2, 0.1, 0.3],    # image 1: its caption (2) ranks 4th
                     [0.0, 0.1, 0.2, 0.9]])   # image 2: its caption (3) ranks 1st
  out = zeroshot.retrieval_recalls(scores, [0, 0, 1, 2], ks=(1, 2, 3))
  assert out['i2t_R@1'] == pytest.approx(1 / 3)
  assert out['i2t_R@2'] == pytest.approx(2 / 3)
  assert out['i2t_R@3'] == pytest.approx(2 / 3)
  # caption columns: 0 -> image 0 ranks 2nd (0.5 above), 1 -> 1st, 2 -> 3rd, 3 -> 1st
  assert out['t2i_R@1'] == pytest.approx(2 / 4)
  assert out['t2i_R@2'] == pytest.approx(3 / 4)
  assert out['t2i_R@3'] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- text-to-image


class _FakeUNet:
  """The exact eps-predictor of the point mass at mean(c) (a constant image per caption)."""

  def apply(self, variables, x, t, c):
    target = jnp.mean(c, axis=(1, 2))[:, None, None, None] * jnp.ones_like(x)
    a = ABAR[t.astype(jnp.int32)][:, None, None, None]
    return (x - jnp.sqrt(a) * target) / jnp.sqrt(1 - a)


def test_t2i_sampler_guides_on_the_text_condition():
  config = tiny_config(**{'sample.steps': 4})
  sample = jax.jit(diffdis_sampler.make_t2i_sampler(_FakeUNet(), config, guidance=2.5))
  context = np.stack([np.full((CTX_LEN, CTX_DIM), 0.4), np.full((CTX_LEN, CTX_DIM), -0.2)])
  null = np.full((CTX_LEN, CTX_DIM), 0.1, np.float32)
  noise = np.random.default_rng(0).standard_normal((2, 3, 3, 2)).astype(np.float32)
  out = np.asarray(sample(None, noise, context.astype(np.float32), null))
  expected = 0.1 + 2.5 * (np.array([0.4, -0.2]) - 0.1)
  np.testing.assert_allclose(out, np.broadcast_to(expected[:, None, None, None], out.shape),
                             atol=1e-4)
