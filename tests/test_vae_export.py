"""Exporting our AutoencoderKL to a diffusers folder: load_vae reads it back bit for bit,
diffusers loads it with every key in place and computes what we compute, and a diffusers VAE
taken through from_diffusers_vae and back comes out as the state dict it went in as."""
import dataclasses
import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL as PeerAutoencoderKL

from diffdis_jax import weights
from diffdis_jax.nn.vae import AutoencoderKL
from peer_utils import nchw, nhwc, randomize, state_dict_numpy

TINY = dict(in_channels=1, out_channels=1, block_out_channels=(16, 32), layers_per_block=1,
            latent_channels=4, norm_num_groups=8, scaling_factor=0.7, shift_factor=0.1)


def random_params(vae: AutoencoderKL, seed: int = 0):
  """The tree `vae.init` builds, every leaf random at peer_utils.randomize's scales: kernels
  std 1/sqrt(fan_in), norm scales 1 + 0.1 N(0, 1), biases 0.1 N(0, 1)."""
  side = 2 ** len(vae.block_out_channels)
  shapes = jax.eval_shape(lambda: vae.init(jax.random.key(0),
                                           jnp.zeros((1, side, side, vae.in_channels))))
  flat = flax.traverse_util.flatten_dict(flax.core.meta.unbox(shapes['params']))
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in flat.items():
    noise = rng.standard_normal(leaf.shape).astype(np.float32)
    if path[-1] == 'kernel':
      out[path] = noise / np.float32(np.sqrt(np.prod(leaf.shape[:-1])))
    elif path[-1] == 'scale':
      out[path] = 1 + np.float32(0.1) * noise
    else:
      out[path] = np.float32(0.1) * noise
  return flax.traverse_util.unflatten_dict(out)


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
  vae = AutoencoderKL(**TINY)
  params = random_params(vae)
  folder = str(tmp_path_factory.mktemp('vae') / 'exported')  # not there yet: created
  assert weights.save_diffusers_vae(folder, vae, params) == folder
  return vae, params, folder


def test_vae_export_round_trips_through_load_vae(exported):
  vae, params, folder = exported
  loaded, loaded_params = weights.load_vae(folder)
  for field in dataclasses.fields(AutoencoderKL):
    if field.name not in ('parent', 'name'):
      assert getattr(loaded, field.name) == getattr(vae, field.name), field.name
  ours = flax.traverse_util.flatten_dict(params)
  theirs = flax.traverse_util.flatten_dict(loaded_params)
  assert sorted(theirs) == sorted(ours)
  for path, value in ours.items():
    assert theirs[path].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(theirs[path]), value, err_msg='/'.join(path))
  with open(f'{folder}/config.json') as f:
    assert json.load(f)['sample_size'] == 32


def test_vae_export_loads_and_computes_in_diffusers(exported):
  vae, params, folder = exported
  peer, info = PeerAutoencoderKL.from_pretrained(folder, output_loading_info=True)
  peer = peer.eval()
  assert info['missing_keys'] == [] and info['unexpected_keys'] == []
  assert info['mismatched_keys'] == [] and info['error_msgs'] == []
  assert peer.config.scaling_factor == pytest.approx(0.7)
  assert peer.config.shift_factor == pytest.approx(0.1)
  assert next(peer.parameters()).dtype == torch.float32

  z = np.random.default_rng(1).standard_normal((2, 8, 8, 4)).astype(np.float32)
  ours = np.asarray(vae.apply({'params': params}, z, method='decode'))
  with torch.no_grad():
    theirs = nhwc(peer.decode(nchw(z)).sample)
  assert ours.shape == theirs.shape == (2, 16, 16, 1)
  assert np.abs(theirs).max() > 1e-2
  assert np.abs(ours - theirs).max() <= 1e-4

  x = np.random.default_rng(2).uniform(-1, 1, (2, 16, 16, 1)).astype(np.float32)
  mean, logvar = vae.apply({'params': params}, x, method='encode')
  with torch.no_grad():
    dist = peer.encode(nchw(x)).latent_dist
  for a, b in ((mean, dist.mean), (logvar, dist.logvar)):
    b = nhwc(b)
    assert np.asarray(a).shape == b.shape == (2, 8, 8, 4)
    assert np.abs(b).max() > 1e-2
    assert np.abs(np.asarray(a) - b).max() <= 1e-4


def test_vae_export_reproduces_peer_state_dict():
  config = dict(in_channels=3, out_channels=3, block_out_channels=(16, 32), layers_per_block=1,
                down_block_types=('DownEncoderBlock2D',) * 2,
                up_block_types=('UpDecoderBlock2D',) * 2, latent_channels=4, norm_num_groups=8)
  peer = randomize(PeerAutoencoderKL(**config), seed=3)
  state = state_dict_numpy(peer)
  vae, params = weights.from_diffusers_vae(dict(peer.config), state)
  exported_config, exported = weights.to_diffusers_vae(vae, params)
  assert sorted(exported) == sorted(state)
  for key, value in state.items():
    assert exported[key].dtype == np.float32
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  for key, value in exported_config.items():
    if key != '_class_name':
      expected = peer.config[key]
      assert value == (list(expected) if isinstance(expected, tuple) else expected), key


def test_vae_export_refuses_params_of_another_module(exported):
  vae, params, folder = exported
  wider = AutoencoderKL(**{**TINY, 'latent_channels': 8})
  with pytest.raises(weights.WeightMismatchError, match='quant_conv'):
    weights.to_diffusers_vae(wider, params)
