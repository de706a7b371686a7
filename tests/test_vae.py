"""SD AutoencoderKL: parity with diffusers' AutoencoderKL (posterior moments and decoder)."""
import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from diffdis_jax import weights
from diffdis_jax.nn.vae import gaussian_std
from peer_utils import assert_close, nchw, nhwc, randomize, state_dict_numpy

CONFIG = dict(in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
              down_block_types=('DownEncoderBlock2D',) * 2,
              up_block_types=('UpDecoderBlock2D',) * 2, latent_channels=4, norm_num_groups=8)


@pytest.fixture(scope='module')
def vae():
  torch.manual_seed(0)
  peer = randomize(AutoencoderKL(**CONFIG))
  module, params = weights.from_diffusers_vae(dict(peer.config), state_dict_numpy(peer))
  return peer, module, params


def test_vae_encode_moments_match(vae):
  peer, module, params = vae
  x = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  mean, logvar = jax.jit(lambda p, x: module.apply({'params': p}, x, method='encode'))(params, x)
  with torch.no_grad():
    dist = peer.encode(nchw(x)).latent_dist
  assert mean.shape == (2, 8, 8, 4)
  assert_close(mean, nhwc(dist.mean))
  assert_close(logvar, nhwc(dist.logvar))
  assert_close(gaussian_std(logvar), nhwc(dist.std))
  scaled = module.apply({'params': params}, x, method='encode_latents')
  np.testing.assert_allclose(scaled, mean * 0.18215, rtol=1e-5, atol=1e-6)


def test_vae_decode_matches(vae):
  peer, module, params = vae
  z = np.random.default_rng(1).standard_normal((2, 8, 8, 4)).astype(np.float32)
  ours = jax.jit(lambda p, z: module.apply({'params': p}, z, method='decode'))(params, z)
  with torch.no_grad():
    theirs = peer.decode(nchw(z)).sample
  assert ours.shape == (2, 16, 16, 3)
  assert_close(ours, nhwc(theirs))


def test_vae_deprecated_attention_names(vae):
  """Older SD VAE files name the mid-block attention query/key/value/proj_attn."""
  peer, _, params = vae
  old = {'to_q': 'query', 'to_k': 'key', 'to_v': 'value', 'to_out.0': 'proj_attn'}
  renamed = {}
  for key, value in state_dict_numpy(peer).items():
    for new, legacy in old.items():
      key = key.replace(f'attentions.0.{new}.', f'attentions.0.{legacy}.')
    renamed[key] = value
  assert any('proj_attn' in k for k in renamed)
  _, legacy_params = weights.from_diffusers_vae(dict(peer.config), renamed)
  for (path, a), (_, b) in zip(jax.tree_util.tree_leaves_with_path(params),
                               jax.tree_util.tree_leaves_with_path(legacy_params)):
    np.testing.assert_array_equal(a, b, err_msg=str(path))
