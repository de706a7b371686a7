"""CLIP text encoder: parity with transformers' CLIPTextModel(WithProjection) at tiny sizes."""
import numpy as np
import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from diffdis_jax import weights
from diffdis_jax.nn.clip_text import eos_positions
from peer_utils import assert_close, randomize, state_dict_numpy

SMALL = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=16)


def _ids_legacy(rng):
  """SD 1.x style: end-of-text is the largest id (99), padded with it to the end."""
  ids = rng.integers(3, 98, size=(3, 12))
  for row, end in enumerate([4, 11, 7]):
    ids[row, end:] = 99
  return ids


def _ids_new(rng, eos=50):
  """eos_token_id=50 with larger ids before it: argmax would pick the wrong token."""
  ids = rng.integers(51, 99, size=(3, 12))
  for row, end in enumerate([2, 9, 5]):
    ids[row, end:] = eos
  return ids


def _run_torch(model, ids, mask=None):
  with torch.no_grad():
    kw = {} if mask is None else {'attention_mask': torch.from_numpy(mask)}
    return model(input_ids=torch.from_numpy(ids), **kw)


@pytest.mark.parametrize('act,eos', [('quick_gelu', 2), ('gelu', 50)])
def test_clip_text_matches(act, eos):
  torch.manual_seed(0)
  config = CLIPTextConfig(**SMALL, hidden_act=act, eos_token_id=eos)
  peer = randomize(CLIPTextModel(config))
  module, params = weights.from_transformers_clip_text(config.to_dict(), state_dict_numpy(peer))
  assert module.projection_dim is None
  rng = np.random.default_rng(0)
  ids = _ids_legacy(rng) if eos == 2 else _ids_new(rng)
  ours = module.apply({'params': params}, ids)
  theirs = _run_torch(peer, ids)
  assert_close(ours['last_hidden_state'], theirs.last_hidden_state.numpy())
  assert_close(ours['pooler_output'], theirs.pooler_output.numpy())


def test_clip_text_with_projection_and_padding_mask():
  torch.manual_seed(1)
  config = CLIPTextConfig(**SMALL, hidden_act='gelu', eos_token_id=50, projection_dim=24)
  peer = randomize(CLIPTextModelWithProjection(config))
  module, params = weights.from_transformers_clip_text(config.to_dict(), state_dict_numpy(peer))
  assert module.projection_dim == 24
  ids = _ids_new(np.random.default_rng(1))
  mask = (np.arange(12)[None, :] <= np.array([[2], [9], [5]])).astype(np.int64)
  ours = module.apply({'params': params}, ids, mask, output_hidden_states=True)
  with torch.no_grad():
    theirs = peer(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                  output_hidden_states=True)
  assert_close(ours['text_embeds'], theirs.text_embeds.numpy())
  assert_close(ours['last_hidden_state'], theirs.last_hidden_state.numpy())
  assert len(ours['hidden_states']) == len(theirs.hidden_states) == 3
  assert_close(ours['hidden_states'][1], theirs.hidden_states[1].numpy())


def test_eos_position_rules():
  ids = np.array([[5, 49406, 7, 49407, 49407], [49407, 3, 49407, 1, 1]])
  np.testing.assert_array_equal(eos_positions(ids, 2), [3, 0])
  np.testing.assert_array_equal(eos_positions(ids, 1), [0, 3])
