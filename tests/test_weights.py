"""DiT weight import (diffusers and facebookresearch/DiT layouts) and the loaders' errors."""
import jax
import numpy as np
import pytest
import torch
from diffusers import DiTTransformer2DModel

from diffdis_jax import weights
from peer_utils import assert_close, nchw, nhwc, randomize, state_dict_numpy

DIT_CONFIG = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=8,
                  num_layers=2, sample_size=8, patch_size=2, num_embeds_ada_norm=10)


@pytest.fixture(scope='module')
def dit():
  torch.manual_seed(0)
  model = randomize(DiTTransformer2DModel(**DIT_CONFIG))
  # Converted checkpoints repeat one timestep/class embedder in every block; so must we.
  first = model.transformer_blocks[0].norm1.emb
  for block in model.transformer_blocks[1:]:
    block.norm1.emb.load_state_dict(first.state_dict())
  return model


@pytest.fixture(scope='module')
def dit_inputs():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 8, 8, 4)).astype(np.float32)
  t = np.array([3, 517])
  y = np.array([1, 10])  # 10 = num_classes: the null class
  return x, t, y


def _torch_dit(model, x, t, y):
  with torch.no_grad():
    return nhwc(model(nchw(x), timestep=torch.from_numpy(t), class_labels=torch.from_numpy(y)
                      ).sample)


def test_diffusers_dit_matches(dit, dit_inputs):
  x, t, y = dit_inputs
  module, params = weights.from_diffusers_dit(dict(dit.config), state_dict_numpy(dit))
  assert module.learn_sigma and module.decoder_mode == 'split'
  out = module.apply({'params': params}, x, t.astype(np.float32), y)
  assert out.shape == (2, 8, 8, 8)
  assert_close(out, _torch_dit(dit, x, t, y))


def official_state_dict(model) -> dict:
  """The diffusers DiT's weights under facebookresearch/DiT's names."""
  sd = state_dict_numpy(model)
  emb = 'transformer_blocks.0.norm1.emb.'
  out = {
      'x_embedder.proj.weight': sd['pos_embed.proj.weight'],
      'x_embedder.proj.bias': sd['pos_embed.proj.bias'],
      't_embedder.mlp.0.weight': sd[emb + 'timestep_embedder.linear_1.weight'],
      't_embedder.mlp.0.bias': sd[emb + 'timestep_embedder.linear_1.bias'],
      't_embedder.mlp.2.weight': sd[emb + 'timestep_embedder.linear_2.weight'],
      't_embedder.mlp.2.bias': sd[emb + 'timestep_embedder.linear_2.bias'],
      'y_embedder.embedding_table.weight': sd[emb + 'class_embedder.embedding_table.weight'],
      'pos_embed': model.pos_embed.pos_embed.numpy(),
  }
  for name, ours in (('proj_out_1', 'final_layer.adaLN_modulation.1'),
                     ('proj_out_2', 'final_layer.linear')):
    for leaf in ('weight', 'bias'):
      out[f'{ours}.{leaf}'] = sd[f'{name}.{leaf}']
  for i in range(len(model.transformer_blocks)):
    b = f'transformer_blocks.{i}.'
    for leaf in ('weight', 'bias'):
      out[f'blocks.{i}.attn.qkv.{leaf}'] = np.concatenate(
          [sd[f'{b}attn1.to_{n}.{leaf}'] for n in 'qkv'], axis=0)
      for theirs, ours in (('attn1.to_out.0', 'attn.proj'), ('ff.net.0.proj', 'mlp.fc1'),
                           ('ff.net.2', 'mlp.fc2'), ('norm1.linear', 'adaLN_modulation.1')):
        out[f'blocks.{i}.{ours}.{leaf}'] = sd[f'{b}{theirs}.{leaf}']
  return out


def test_official_dit_layout(dit, dit_inputs):
  x, t, y = dit_inputs
  official = official_state_dict(dit)
  module, params = weights.from_official_dit(official, 'DiT-S/2', depth=2, width=32,
                                             num_heads=2)
  _, diffusers_params = weights.from_diffusers_dit(dict(dit.config), state_dict_numpy(dit))
  flat = lambda p: dict(jax.tree_util.tree_leaves_with_path(p))
  ours, theirs = flat(params), flat(diffusers_params)
  assert ours.keys() == theirs.keys()
  for k in ours:
    np.testing.assert_array_equal(ours[k], theirs[k], err_msg=str(k))
  # The official DiT embeds time with frequency shift 0 (diffusers' port uses 1): set the
  # peer's embedders to 0 and the outputs must agree.
  assert module.time_freq_shift == 0.0 and module.input_size == 8 and module.num_classes == 10
  for block in dit.transformer_blocks:
    block.norm1.emb.time_proj.downscale_freq_shift = 0
  try:
    expected = _torch_dit(dit, x, t, y)
  finally:
    for block in dit.transformer_blocks:
      block.norm1.emb.time_proj.downscale_freq_shift = 1
  assert_close(module.apply({'params': params}, x, t.astype(np.float32), y), expected)


def test_bad_keys_are_listed(dit):
  sd = state_dict_numpy(dit)
  del sd['proj_out_2.bias']
  sd['transformer_blocks.1.attn1.extra.weight'] = np.zeros((3, 3), np.float32)
  sd['transformer_blocks.0.ff.net.2.weight'] = np.zeros((5, 5), np.float32)
  with pytest.raises(weights.WeightMismatchError) as info:
    weights.from_diffusers_dit(dict(dit.config), sd)
  message = str(info.value)
  assert '1 missing, 1 unexpected, 1 mis-shaped' in message
  assert 'final_layer/linear/dense/bias' in message
  assert 'transformer_blocks.1.attn1.extra.weight' in message
  assert 'transformer_blocks.0.ff.net.2.weight (5, 5)' in message


def test_official_dit_wrong_size_is_listed(dit):
  with pytest.raises(ValueError, match='pos_embed'):
    weights.from_official_dit(official_state_dict(dit), 'DiT-S/2', depth=2, num_heads=2)


def test_embedder_copies_must_agree(dit):
  sd = state_dict_numpy(dit)
  key = 'transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.bias'
  sd[key] = sd[key] + 1
  with pytest.raises(ValueError, match=key.replace('.', r'\.')):
    weights.from_diffusers_dit(dict(dit.config), sd)


@pytest.mark.parametrize('suffix', ['.pt', '.pth', '.bin', '.ckpt'])
def test_pickles_are_refused_with_a_one_liner(tmp_path, suffix):
  path = tmp_path / f'model{suffix}'
  path.write_bytes(b'not read')
  with pytest.raises(ValueError) as info:
    weights.load_safetensors(path)
  message = str(info.value)
  assert '\n' not in message and 'safetensors' in message and 'torch.load' in message


def test_load_safetensors_roundtrip(tmp_path):
  from safetensors.numpy import save_file
  tensors = {'a': np.arange(6, dtype=np.float32).reshape(2, 3), 'b': np.ones(4, np.float16)}
  save_file(tensors, str(tmp_path / 'w.safetensors'))
  loaded = weights.load_safetensors(tmp_path / 'w.safetensors')
  assert loaded.keys() == tensors.keys()
  for k in tensors:
    np.testing.assert_array_equal(loaded[k], tensors[k])


def test_init_dit_weights_fill_sddit_where_they_fit(dit, tmp_path):
  """init.dit_weights: an SD-DiT (separate decoder, teacher, EDM's 4 output channels) takes the
  DiT's embedders and blocks into params, EMA and teacher; its decoder, head and the output
  layer (DiT learned sigma: 8 channels) keep their own initialisation."""
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  from conftest import tiny_sddit_config  # pylint: disable=g-import-not-at-top
  from diffdis_jax.modes.run import build_trainer  # pylint: disable=g-import-not-at-top
  official = official_state_dict(dit)
  path = str(tmp_path / 'dit.safetensors')
  safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in official.items()}, path)
  config = tiny_sddit_config(**{'model.in_channels': 4, 'init.dit_weights': path})
  fresh = jax.device_get(build_trainer(tiny_sddit_config(**{'model.in_channels': 4}),
                                      str(tmp_path / 'a')).init_state())
  state = jax.device_get(build_trainer(config, str(tmp_path / 'b')).init_state())
  _, theirs = weights.from_official_dit(official, 'DiT-S/2', depth=2, width=32, num_heads=2)
  for name in ('x_embedder', 't_embedder', 'y_embedder', 'blocks_0', 'blocks_1'):
    for tree in (state.params, state.ema_params, state.aux['teacher']):
      jax.tree.map(np.testing.assert_array_equal, tree[name], theirs[name])
  assert 'decoder_blocks_0' in state.params and 'projection_head' in state.params
  for mine, init in ((state.params['decoder_blocks_0'], fresh.params['decoder_blocks_0']),
                     (state.params['final_layer']['linear'], fresh.params['final_layer']['linear']),
                     (state.params['projection_head'], fresh.params['projection_head'])):
    jax.tree.map(np.testing.assert_array_equal, mine, init)
