"""A tiny diffusers-layout SD folder loads through load_stable_diffusion, and text -> latent ->
image runs and equals the same chain through the PyTorch peers."""
import json
import os
import string

import jax
import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from diffdis_jax import weights
from peer_utils import assert_close, nchw, nhwc, randomize

MAX_TOKENS = 16
MERGES = ['c a', 'ca t</w>', 'd o', 'do g</w>']


def write_tokenizer(directory) -> int:
  """A minimal CLIP BPE tokenizer (letters, a few merges; start/end of text last, so the
  end-of-text id is the largest as in CLIP's real vocabulary). Returns the vocab size."""
  os.makedirs(directory)
  vocab = {}
  for suffix in ('', '</w>'):
    for c in string.ascii_lowercase:
      vocab[c + suffix] = len(vocab)
  for merge in MERGES:
    vocab[merge.replace(' ', '')] = len(vocab)
  vocab['<|startoftext|>'] = len(vocab)
  vocab['<|endoftext|>'] = len(vocab)
  with open(os.path.join(directory, 'vocab.json'), 'w') as f:
    json.dump(vocab, f)
  with open(os.path.join(directory, 'merges.txt'), 'w') as f:
    f.write('#version: 0.2\n' + '\n'.join(MERGES) + '\n')
  with open(os.path.join(directory, 'tokenizer_config.json'), 'w') as f:
    json.dump({'model_max_length': MAX_TOKENS}, f)
  return len(vocab)


@pytest.fixture(scope='module')
def sd_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp('tiny_sd')
  vocab_size = write_tokenizer(folder / 'tokenizer')
  torch.manual_seed(0)
  # eos_token_id=2: the legacy value SD 1.x configs carry (pooling by argmax of the ids).
  text_encoder = randomize(CLIPTextModel(CLIPTextConfig(
      vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=4, max_position_embeddings=MAX_TOKENS, eos_token_id=2)), seed=1)
  unet = randomize(UNet2DConditionModel(
      sample_size=8, block_out_channels=(32, 64), layers_per_block=1,
      down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
      up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'), attention_head_dim=2,
      cross_attention_dim=32, norm_num_groups=8), seed=2)
  vae = randomize(AutoencoderKL(
      block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
      down_block_types=('DownEncoderBlock2D',) * 2, up_block_types=('UpDecoderBlock2D',) * 2),
      seed=3)
  for name, model in (('text_encoder', text_encoder), ('unet', unet), ('vae', vae),
                      ('scheduler', DDIMScheduler())):
    model.save_pretrained(folder / name, **({} if name == 'scheduler' else
                                            {'safe_serialization': True}))
  return folder, (text_encoder, unet, vae)


def tiny_diffdis_config(folder, input_size: int = 8):
  """configs/diffdis_sd15.py shrunk to the folder `sd_folder` writes: its UNet's fields, its
  CLIP's width and length, float32; the text query is 'eot' (that CLIP has no projection)."""
  from configs import diffdis_sd15  # pylint: disable=g-import-not-at-top
  config = diffdis_sd15.get_config()
  config.init.sd_folder, config.compute_dtype = str(folder), 'float32'
  m = config.model
  m.input_size, m.block_out_channels, m.layers_per_block = input_size, (32, 64), 1
  m.down_block_types = ('CrossAttnDownBlock2D', 'DownBlock2D')
  m.up_block_types = ('UpBlock2D', 'CrossAttnUpBlock2D')
  m.attention_head_dim, m.norm_num_groups = 2, 8
  d = config.diffdis
  d.context_dim, d.context_length, d.head_blocks = 32, MAX_TOKENS, 1
  d.query, d.text_dim = 'eot', 32
  return config


def test_text_to_image_forward(sd_folder):
  folder, (torch_clip, torch_unet, torch_vae) = sd_folder
  sd = weights.load_stable_diffusion(folder)
  assert sd.scheduler_config['_class_name'] == 'DDIMScheduler'
  ids = sd.tokenizer(['a cat', 'a dog and a cat'], padding='max_length', max_length=MAX_TOKENS,
                     truncation=True, return_tensors='np')['input_ids']
  assert ids.shape == (2, MAX_TOKENS)
  latents = np.random.default_rng(0).standard_normal((2, 8, 8, 4)).astype(np.float32)
  t, alpha_bar = 500.0, 0.3

  @jax.jit
  def text_to_image(ids, latents):
    context = sd.text_encoder.apply({'params': sd.text_encoder_params}, ids)['last_hidden_state']
    eps = sd.unet.apply({'params': sd.unet_params}, latents, t, context)
    x0 = (latents - np.sqrt(1 - alpha_bar) * eps) / np.sqrt(alpha_bar)  # one DDIM jump to t=0
    return sd.vae.apply({'params': sd.vae_params}, x0, method='decode_latents')

  image = text_to_image(ids, latents)
  assert image.shape == (2, 16, 16, 3) and np.isfinite(np.asarray(image)).all()

  with torch.no_grad():
    context = torch_clip(torch.from_numpy(ids)).last_hidden_state
    eps = torch_unet(nchw(latents), torch.tensor([t, t]), context).sample
    x0 = (nchw(latents) - np.sqrt(1 - alpha_bar) * eps) / np.sqrt(alpha_bar)
    theirs = torch_vae.decode(x0 / torch_vae.config.scaling_factor).sample
  assert_close(image, nhwc(theirs))


def test_pickle_weights_in_folder_are_refused(sd_folder, tmp_path):
  folder, _ = sd_folder
  broken = tmp_path / 'broken'
  os.makedirs(broken / 'text_encoder')
  for name in ('unet', 'vae', 'tokenizer'):
    os.symlink(folder / name, broken / name)
  os.symlink(folder / 'text_encoder' / 'config.json', broken / 'text_encoder' / 'config.json')
  with pytest.raises(FileNotFoundError, match='holds no model.safetensors'):
    weights.load_stable_diffusion(broken)
  (broken / 'text_encoder' / 'pytorch_model.bin').write_bytes(b'pickle')
  with pytest.raises(ValueError, match='pytorch_model.bin is a pickle.*convert it to safetensors'):
    weights.load_stable_diffusion(broken)


def test_not_a_folder_of_components(tmp_path):
  with pytest.raises(FileNotFoundError, match='diffusers-layout'):
    weights.load_stable_diffusion(tmp_path)
