"""DiT's learned-variance DDPM (diffusion/ddpm.py) against diffusers' schedulers, its guidance,
and sampling DiT's released-weight layout through --mode=sample (configs/dit_xl_official.py)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import torch
from diffusers import DDIMScheduler, DDPMScheduler, DiTTransformer2DModel
from diffusers.schedulers import scheduling_ddpm

from configs import dit_xl_official
from diffdis_jax.core.checks import ConfigError
from diffdis_jax.core.overrides import apply_overrides
from diffdis_jax.diffusion import ddpm, samplers
from diffdis_jax.eval import sample_npz, sddit_sampler
from diffdis_jax.modes.checks import check_run
from diffdis_jax.modes.run import run
from diffdis_jax.nn.vae import AutoencoderKL
from diffdis_jax.tasks import make_task
from diffdis_jax.weights import from_official_dit, load_safetensors, save_diffusers_vae
from peer_utils import nhwc, randomize
from test_weights import official_state_dict

TOL = dict(rtol=1e-5, atol=1e-5)
DIT = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
           num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10)


def _float64(scheduler):
  """diffusers' schedule recomputed in float64 by its own formulas. In float32 it loses the
  small betas to cancellation (1 - abar_t / abar_prev): ~1e-4 relative in the log-variance,
  which would hide a real error. Our float32 values are compared with these."""
  c = scheduler.config
  scheduler.betas = torch.linspace(c.beta_start, c.beta_end, c.num_train_timesteps,
                                   dtype=torch.float64)
  scheduler.alphas = 1.0 - scheduler.betas
  scheduler.alphas_cumprod = torch.cumprod(scheduler.alphas, dim=0)
  scheduler.one = torch.tensor(1.0, dtype=torch.float64)
  scheduler.final_alpha_cumprod = torch.tensor(1.0, dtype=torch.float64)
  return scheduler


def _ddpm_scheduler(float64=True):
  s = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                    beta_schedule='linear', variance_type='learned_range',
                    clip_sample=False, prediction_type='epsilon')
  return _float64(s) if float64 else s


def _ddim_scheduler(steps):
  s = DDIMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02,
                    beta_schedule='linear', clip_sample=False, set_alpha_to_one=True,
                    steps_offset=0, timestep_spacing='leading', prediction_type='epsilon')
  s.set_timesteps(steps)
  return _float64(s)


def _t64(a):
  """NHWC array -> float64 NCHW torch tensor."""
  return torch.from_numpy(np.asarray(a, np.float64).transpose(0, 3, 1, 2).copy())


def _model_output(seed, shape=(2, 8, 8, 4)):
  """(x_t, model output of 2C channels: epsilon, then v in [-1, 1]), NHWC float32."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape).astype(np.float32)
  eps = rng.standard_normal(shape).astype(np.float32)
  v = np.tanh(rng.standard_normal(shape)).astype(np.float32)
  return x, np.concatenate([eps, v], axis=-1)


def test_respacing_keeps_dits_steps():
  np.testing.assert_array_equal(ddpm.space_timesteps(1000, ''), np.arange(1000))
  np.testing.assert_array_equal(ddpm.space_timesteps(1000, '10'), np.arange(10) * 111)
  np.testing.assert_array_equal(ddpm.space_timesteps(1000, 'ddim25'), np.arange(25) * 40)
  np.testing.assert_array_equal(ddpm.space_timesteps(1000, 'ddim1'), [0])
  steps = ddpm.space_timesteps(1000, '250')  # the paper's: both ends, a stride of 999/249
  assert len(steps) == 250 and steps[0] == 0 and steps[-1] == 999
  assert np.all(np.diff(steps) >= 4) and np.all(np.diff(steps) <= 5)
  halves = ddpm.space_timesteps(1000, '3,2')  # sections 0..499 and 500..999
  np.testing.assert_array_equal(halves, [0, 250, 499, 500, 999])
  for bad in ('ddim999', '0', 'abc', '1001', 'ddim', '5,x'):
    with pytest.raises(ValueError, match='respacing'):
      ddpm.space_timesteps(1000, bad)


def test_respaced_schedule_keeps_alphas_cumprod_and_matches_diffusers():
  ours = ddpm.respaced_schedule('')
  as_built = _ddpm_scheduler(float64=False)  # its float32 schedule, as it ships
  np.testing.assert_allclose(ours.alphas_cumprod, as_built.alphas_cumprod.numpy(), **TOL)
  np.testing.assert_allclose(ours.betas, as_built.betas.numpy(), **TOL)
  theirs = _ddpm_scheduler()
  np.testing.assert_allclose(ours.alphas_cumprod, theirs.alphas_cumprod.numpy(), rtol=1e-12)
  spaced = ddpm.respaced_schedule('250')
  # respacing recomputes the betas so that the kept steps keep their alphas_cumprod
  np.testing.assert_allclose(spaced.alphas_cumprod, ours.alphas_cumprod[spaced.timesteps],
                             rtol=1e-12)
  np.testing.assert_allclose(np.cumprod(1 - spaced.betas), spaced.alphas_cumprod, rtol=1e-10)
  # the learned-range log-variance of every respaced step but the first (where diffusers
  # clamps the zero posterior variance and DiT takes the next step's) equals diffusers'
  theirs.set_timesteps(timesteps=spaced.timesteps[::-1].tolist())
  x, out = _model_output(0)
  v = out[..., 4:]
  for t in (249, 120, 1):
    _, log_var = ddpm.p_mean_variance(spaced, out, x, jnp.full((2,), t))
    want = theirs._get_variance(int(spaced.timesteps[t]), torch.from_numpy(v).double())
    np.testing.assert_allclose(log_var, want.numpy(), **TOL)
  # at the first step DiT takes the second step's posterior log-variance (v = -1 selects it)
  low = np.concatenate([out[..., :4], -np.ones_like(v)], axis=-1)
  _, log_var = ddpm.p_mean_variance(spaced, low, x, jnp.zeros((2,), jnp.int32))
  want = theirs._get_variance(int(spaced.timesteps[1]), -torch.ones(v.shape, dtype=torch.float64))
  np.testing.assert_allclose(log_var, want.numpy(), **TOL)


@pytest.mark.parametrize('respacing', ['', '250'])
def test_ancestral_step_matches_ddpm_scheduler(respacing, monkeypatch):
  schedule = ddpm.respaced_schedule(respacing)
  theirs = _ddpm_scheduler()
  if respacing:
    theirs.set_timesteps(timesteps=schedule.timesteps[::-1].tolist())
  last = len(schedule.timesteps) - 1
  for seed, t in enumerate((last, last // 2, 1, 0)):
    x, out = _model_output(seed)
    noise = np.random.default_rng(100 + seed).standard_normal(x.shape).astype(np.float32)
    monkeypatch.setattr(scheduling_ddpm, 'randn_tensor', lambda *a, **k: _t64(noise))
    ours = ddpm.ancestral_step(schedule, out, x, jnp.full((2,), t), noise)
    want = theirs.step(_t64(out), int(schedule.timesteps[t]), _t64(x)).prev_sample
    np.testing.assert_allclose(ours, nhwc(want), **TOL)
  mean, _ = ddpm.p_mean_variance(schedule, out, x, jnp.zeros((2,), jnp.int32))
  np.testing.assert_allclose(mean, ours, rtol=0, atol=0)  # the last step adds no noise


def test_ddim_step_matches_ddim_scheduler():
  schedule = ddpm.respaced_schedule('ddim25')
  theirs = _ddim_scheduler(25)
  np.testing.assert_array_equal(theirs.timesteps.numpy()[::-1], schedule.timesteps)
  for seed, t in enumerate((24, 10, 1, 0)):
    x, out = _model_output(seed)
    ours = ddpm.learned_ddim_step(schedule, out, x, jnp.full((2,), t))
    want = theirs.step(_t64(out[..., :4]), int(schedule.timesteps[t]), _t64(x),
                       eta=0.0).prev_sample
    np.testing.assert_allclose(ours, nhwc(want), **TOL)


def _nchw(a):
  return np.asarray(a).transpose(0, 3, 1, 2)


def _nhwc(a):
  return np.asarray(a).transpose(0, 2, 3, 1)


def _dit_forward_with_cfg(model_out_fn, x, t, y, null, scale):
  """facebookresearch/DiT's `forward_with_cfg`, NCHW numpy: the batch is [x; x], labels
  [y; null]; channels :3 guided, the rest (4th epsilon channel, variance) as the model gave."""
  half = x[:len(x) // 2]
  out = model_out_fn(np.concatenate([half, half]), t, y)
  eps, rest = out[:, :3], out[:, 3:]
  cond, uncond = np.split(eps, 2)
  half_eps = uncond + scale * (cond - uncond)
  return np.concatenate([np.concatenate([half_eps, half_eps]), rest], axis=1)


def test_guidance_defaults_to_dits_three_channels():
  rng = np.random.default_rng(0)
  table = jnp.asarray(rng.standard_normal((11, 8)), jnp.float32)  # per-label output, 8 ch

  def net(x, t, y):  # NHWC, depends on the input, the timestep and the label
    return x.mean(-1, keepdims=True) * t[:, None, None, None] + table[y][:, None, None, :]

  x = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)
  t, y = jnp.asarray([3.0, 5.0]), jnp.asarray([1, 7])
  config = dit_xl_official.get_config()
  assert config.sample.guidance_channels == 3 and config.sample.guidance == 1.5
  ours = samplers.classifier_free_guidance(net, y, 10, 1.5, config.sample.guidance_channels)
  nchw_net = lambda a, tt, yy: _nchw(net(_nhwc(a), tt, yy))
  want = _dit_forward_with_cfg(nchw_net, np.concatenate([_nchw(x)] * 2), jnp.concatenate([t, t]),
                               jnp.concatenate([y, jnp.full_like(y, 10)]), 10, 1.5)
  np.testing.assert_allclose(ours(x, t), _nhwc(want[:2]), rtol=1e-6, atol=1e-6)
  cond, uncond = net(x, t, y), net(x, t, jnp.full_like(y, 10))
  every = samplers.classifier_free_guidance(net, y, 10, 1.5, 4)(x, t)
  np.testing.assert_allclose(every[..., :4], uncond[..., :4] + 1.5 * (cond - uncond)[..., :4],
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(every[..., 4:], cond[..., 4:])  # the variance is never guided
  assert np.abs(every[..., 3] - ours(x, t)[..., 3]).max() > 1e-3


class _StubModel:
  """The sampler's view of a model: apply, num_classes, in_channels."""
  num_classes, in_channels = 10, 4

  def apply(self, variables, x, t, y):
    eps = jnp.cos(y[:, None, None, None] + jnp.arange(4.0)) * variables['params']['scale']
    return jnp.concatenate([eps + 0 * x, jnp.zeros_like(x)], axis=-1)


def test_sampler_guides_the_configured_channels():
  """With 'ddim1' the one step returns the x0 estimate, channel by channel: only the
  unguided 4th channel differs between DiT's 3-channel default and guiding all four."""
  config = dit_xl_official.get_config()
  config.sample.respacing, config.sample.solver = 'ddim1', 'ddim'
  noise = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4, 4))
  labels = jnp.asarray([2, 5])
  params = {'scale': jnp.float32(100.0)}
  three = sddit_sampler.make_sample_fn(_StubModel(), config)(params, noise, labels)
  config.sample.guidance_channels = 0
  four = sddit_sampler.make_sample_fn(_StubModel(), config)(params, noise, labels)
  np.testing.assert_allclose(three[..., :3], four[..., :3], rtol=1e-6)
  assert np.abs(three[..., 3] - four[..., 3]).min() > 1e-3


def _tiny_official(**overrides):
  """configs/dit_xl_official.py at the size of DIT: width 32, depth 2, 8x8x4 latents."""
  return apply_overrides(dit_xl_official.get_config(), {
      'model.width': 32, 'model.depth': 2, 'model.num_heads': 2, 'model.input_size': 8,
      'model.num_classes': 10, 'mesh.data': -1, 'sample.respacing': '5', 'batch_size': 8,
      'sample.batch_size': 8, 'sample.num_samples': 6, **overrides})


@pytest.fixture(scope='module')
def released(tmp_path_factory):
  """A random DiT in facebookresearch/DiT's layout (safetensors) and a tiny SD-VAE folder."""
  root = tmp_path_factory.mktemp('released')
  torch.manual_seed(0)
  dit = randomize(DiTTransformer2DModel(**DIT))
  first = dit.transformer_blocks[0].norm1.emb
  for block in dit.transformer_blocks[1:]:
    block.norm1.emb.load_state_dict(first.state_dict())
  weights = str(root / 'dit.safetensors')
  safetensors.numpy.save_file(official_state_dict(dit), weights)
  vae = AutoencoderKL(block_out_channels=(8, 8), layers_per_block=1, norm_num_groups=4)
  vae_params = vae.init(jax.random.PRNGKey(1), jnp.zeros((1, 16, 16, 3)))['params']
  return weights, save_diffusers_vae(str(root / 'vae'), vae, vae_params, sample_size=16)


@pytest.mark.parametrize('solver,respacing,scheduler', [('ancestral', '5', 'ddpm'),
                                                        ('ddim', 'ddim4', 'ddim')])
def test_sampler_runs_diffusers_loop_with_dits_guidance(released, solver, respacing, scheduler,
                                                        monkeypatch):
  """Our sampler against diffusers' scheduler loop on the same network (the released layout,
  random weights) and the same noise, with DiT's forward_with_cfg written out above."""
  weights, _ = released
  config = _tiny_official(**{'init.dit_weights': weights, 'sample.solver': solver,
                             'sample.respacing': respacing})
  model = make_task(config).build_model()
  _, params = from_official_dit(load_safetensors(weights), config.model.name, depth=2,
                                width=32, num_heads=2)
  noise = jax.random.normal(jax.random.PRNGKey(3), (2, 8, 8, 4))
  labels = jnp.asarray([4, 9])
  ours = jax.jit(sddit_sampler.make_sample_fn(model, config))(params, noise, labels)

  schedule = ddpm.respaced_schedule(respacing)
  keys = sddit_sampler.noise_keys(noise)
  steps = iter(range(len(schedule.timesteps) - 1, 0, -1))  # diffusers draws noise for t > 0

  def our_noise(*args, **kwargs):  # the noise our sampler drew at that respaced step
    del args, kwargs
    t = next(steps)
    return _t64(jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, t), (8, 8, 4)))(keys))

  monkeypatch.setattr(scheduling_ddpm, 'randn_tensor', our_noise)
  if scheduler == 'ddpm':
    theirs = _ddpm_scheduler()
    theirs.set_timesteps(timesteps=schedule.timesteps[::-1].tolist())
  else:
    theirs = _ddim_scheduler(4)
  apply = jax.jit(model.apply)
  net = lambda x, t, y: _nchw(apply({'params': params}, _nhwc(x), jnp.asarray(t, jnp.float32),
                                    y))
  y2 = jnp.concatenate([labels, jnp.full_like(labels, 10)])
  x = _nchw(noise)
  for t in theirs.timesteps.tolist():
    out = _dit_forward_with_cfg(net, np.concatenate([x, x]), np.full((4,), t), y2, 10, 1.5)[:2]
    out = torch.from_numpy(np.ascontiguousarray(out, np.float64))
    x64 = torch.from_numpy(np.asarray(x, np.float64))
    if scheduler == 'ddim':
      x = theirs.step(out[:, :4], t, x64, eta=0.0).prev_sample.numpy()
    else:
      x = theirs.step(out, t, x64).prev_sample.numpy()
  if solver == 'ancestral':
    assert next(steps, None) is None  # every noise our sampler drew was used
  np.testing.assert_allclose(ours, _nhwc(x), rtol=1e-4, atol=1e-4)


def test_mode_sample_writes_released_weights_samples(released, tmp_path):
  """--mode=sample with init.dit_weights and no checkpoint: DiT's sampler on those weights,
  through the VAE, to the ADM .npz over 8 devices; the sidecar says how."""
  weights, vae = released
  config = _tiny_official(**{'init.dit_weights': weights, 'data.vae_path': vae})
  workdir = str(tmp_path / 'run')
  check_run(config, 'sample', workdir, 8)
  output = run('sample', config, workdir)
  with np.load(output) as npz:
    images, labels = npz['arr_0'], npz['arr_1']
  assert images.shape == (6, 16, 16, 3) and images.dtype == np.uint8
  assert labels.shape == (6,) and labels.max() < 10
  assert len({im.tobytes() for im in images}) == 6 and np.ptp(images) > 0
  with open(sample_npz.settings_path(output)) as f:
    settings = json.load(f)
  assert settings['parameterization'] == 'ddpm' and settings['solver'] == 'ancestral'
  assert settings['respacing'] == '5' and settings['steps'] == 5
  assert settings['guidance_channels'] == 3 and settings['guidance'] == 1.5
  assert settings['checkpoint_step'] == 0 and settings['init_dit_weights'] == weights
  assert settings['devices'] == 8 and settings['vae'] == vae


@pytest.mark.parametrize('overrides,mode,message', [
    ({'sample.respacing': 'ddim999'}, 'sample', 'sample.respacing'),
    ({'sample.solver': 'heun'}, 'sample', 'sample.solver'),
    ({'sample.guidance_channels': 5}, 'sample', 'sample.guidance_channels'),
    ({'model.learn_sigma': False}, 'sample', 'learn_sigma=True'),
    ({'objective': 'edm'}, 'train', 'learn_sigma=True does not fit'),
    ({'sample.parameterization': 'edm'}, 'sample', 'does not belong to'),
    ({'init.dit_weights': ''}, 'sample', 'no checkpoint'),
    ({'model.decoder_mode': 'separate', 'model.decoder_depth': 1, 'model.decoder_width': 32,
      'model.decoder_heads': 2}, 'sample', 'fills only part of this model'),
])
def test_bad_sampler_settings_are_one_line(released, tmp_path, overrides, mode, message):
  weights, vae = released
  config = _tiny_official(**{'init.dit_weights': weights, 'data.vae_path': vae,
                             'data.dir': str(tmp_path), **overrides})
  with pytest.raises(ConfigError, match=message):
    check_run(config, mode, str(tmp_path / 'run'), 8)
