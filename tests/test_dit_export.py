"""A DiT written out as diffusers' DiTTransformer2DModel (weights/export.py): diffusers loads
the folder and computes our forward; from_diffusers_dit reads it back exactly; what has no
exact DiTTransformer2DModel is refused."""
import flax
import jax
import numpy as np
import pytest
import torch
from diffusers import DiTTransformer2DModel

from diffdis_jax import weights
from diffdis_jax.nn.dit import SDDiT
from peer_utils import assert_close, nchw, nhwc

TINY = dict(input_size=8, in_channels=4, patch=2, width=32, depth=2, num_heads=2,
            num_classes=10, decoder_mode='split', decoder_depth=1, time_freq_shift=1.0)


def _params(model, seed=0):
  """Initialised params with every leaf redrawn: adaLN-Zero and the output layer start at
  zero, which would hide a wrong layout there."""
  x = np.zeros((1, 8, 8, 4), np.float32)
  params = flax.core.meta.unbox(model.init(jax.random.PRNGKey(seed), x, np.zeros((1,)),
                                           np.zeros((1,), np.int32))['params'])
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  fan_in = lambda a: a.shape[0] if a.ndim == 2 else 1
  leaves = [jax.random.normal(k, a.shape) / np.sqrt(fan_in(a)) * (1.0 if a.ndim == 2 else 0.1)
            for k, a in zip(keys, leaves)]
  return jax.tree.unflatten(tree, leaves)


def _inputs():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 8, 8, 4)).astype(np.float32)
  t = np.array([0, 517, 999])     # DDPM steps, as DiTPipeline gives them
  y = np.array([1, 7, 10])        # 10 = num_classes: the null class of guidance
  return x, t, y


@pytest.mark.parametrize('learn_sigma', [True, False])
def test_diffusers_loads_the_export_and_computes_our_forward(tmp_path, learn_sigma):
  model = SDDiT(**TINY, learn_sigma=learn_sigma)
  params = _params(model)
  folder = weights.save_diffusers_dit(tmp_path / 'dit', model, params)
  theirs = DiTTransformer2DModel.from_pretrained(folder).eval()   # strict: every key fits
  x, t, y = _inputs()
  ours = model.apply({'params': params}, x, t.astype(np.float32), y)
  with torch.no_grad():
    out = theirs(nchw(x), timestep=torch.from_numpy(t),
                 class_labels=torch.from_numpy(y)).sample
  assert ours.shape == (3, 8, 8, 8 if learn_sigma else 4)
  assert_close(ours, nhwc(out), tol=1e-4)
  # and back: the importer reads the folder into the very same params
  config, state_dict = weights.to_diffusers_dit(model, params)
  module, back = weights.from_diffusers_dit(config, state_dict)
  assert module.time_freq_shift == 1.0 and module.learn_sigma == learn_sigma
  flat = flax.traverse_util.flatten_dict
  assert flat(back).keys() == flat(params).keys()
  for path, value in flat(params).items():
    np.testing.assert_array_equal(np.asarray(flat(back)[path]), np.asarray(value))


def test_an_sd_dit_exports_its_dit_without_training_only_parts(tmp_path):
  """A split SD-DiT's projection head and mask token serve training only: left out."""
  head = dict(hidden=16, bottleneck=8, out_dim=16, num_layers=2)
  model = SDDiT(**TINY, head=head, infill='mask_token')
  params = _params(model)
  assert {'projection_head', 'mask_token'} <= set(params)
  _, state_dict = weights.to_diffusers_dit(model, params)
  assert not any('projection' in k or 'mask' in k for k in state_dict)
  plain = SDDiT(**TINY)
  x, t, y = _inputs()
  kept = {k: v for k, v in params.items() if k not in ('projection_head', 'mask_token')}
  np.testing.assert_array_equal(model.apply({'params': params}, x, t.astype(np.float32), y),
                                plain.apply({'params': kept}, x, t.astype(np.float32), y))


@pytest.mark.parametrize('fields,message', [
    ({'decoder_mode': 'separate', 'decoder_width': 32, 'decoder_heads': 2},
     'separate decoder'),
    ({'time_freq_shift': 0.0}, 'time_freq_shift=1'),
    ({'mlp_ratio': 2.0}, 'MLP is 4x'),
])
def test_what_diffusers_cannot_hold_is_refused(tmp_path, fields, message):
  model = SDDiT(**{**TINY, **fields})
  with pytest.raises(ValueError, match=message):
    weights.save_diffusers_dit(tmp_path / 'dit', model, _params(model))
  assert not (tmp_path / 'dit').exists()   # nothing written


def test_params_of_another_model_are_refused(tmp_path):
  model = SDDiT(**TINY)
  params = _params(SDDiT(**{**TINY, 'depth': 3}))
  with pytest.raises(weights.WeightMismatchError, match='blocks_2'):
    weights.save_diffusers_dit(tmp_path / 'dit', model, params)


def test_dit_pipeline_samples_the_export_as_our_ddim_sampler(tmp_path):
  """The README's recipe: diffusers' DiTPipeline on the exported folder (DDIM, eta 0, no
  guidance) ends where our DDPM sampler ends from the same start, through the same VAE."""
  from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline  # pylint: disable=g-import-not-at-top
  from diffdis_jax.diffusion import ddpm  # pylint: disable=g-import-not-at-top
  model = SDDiT(**TINY, learn_sigma=True)
  params = _params(model, seed=3)
  folder = weights.save_diffusers_dit(tmp_path / 'dit', model, params)
  torch.manual_seed(0)
  vae = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, latent_channels=4,
                      sample_size=8).eval()
  scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule='linear', beta_start=1e-4,
                            beta_end=0.02, clip_sample=False, set_alpha_to_one=True)
  pipe = DiTPipeline(transformer=DiTTransformer2DModel.from_pretrained(folder), vae=vae,
                     scheduler=scheduler)
  labels = [2, 7]
  theirs = pipe(class_labels=labels, num_inference_steps=5, guidance_scale=1.0,
                generator=torch.Generator().manual_seed(0), output_type='np').images
  # the pipeline's start: randn of its generator, NCHW
  start = torch.randn((2, 4, 8, 8), generator=torch.Generator().manual_seed(0)).numpy()
  y = np.asarray(labels)
  net = lambda x, t: model.apply({'params': params}, x, t.astype(np.float32), y)
  latents = ddpm.sample_learned_range(net, start.transpose(0, 2, 3, 1),
                                      ddpm.respaced_schedule('ddim5'), keys=None, solver='ddim')
  with torch.no_grad():
    ours = vae.decode(nchw(np.asarray(latents)) / vae.config.scaling_factor).sample
  ours = nhwc((ours / 2 + 0.5).clamp(0, 1))
  assert theirs.shape == (2, 8, 8, 3)
  assert_close(ours, theirs, tol=1e-4)
