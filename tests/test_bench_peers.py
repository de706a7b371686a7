"""bench/peers.py builds the PyTorch model our bench step is timed against: the same network."""
import math
import os
import sys

import flax.linen as nn
import jax
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'bench'))
import peers  # noqa: E402  pylint: disable=wrong-import-position
import train_step  # noqa: E402  pylint: disable=wrong-import-position

from diffdis_jax.tasks import make_task  # noqa: E402


def _our_parameter_count(config):
  task = make_task(config)
  model = task.build_model()
  params = jax.eval_shape(lambda r: nn.unbox(task.init_params(model, r)),
                          jax.random.PRNGKey(0))
  return sum(math.prod(p.shape) for p in jax.tree.leaves(params))


def _their_parameter_count(torch_model):
  return sum(p.numel() for p in torch_model.parameters())


@pytest.mark.parametrize('name', ['DiT-S/2', 'DiT-XL/2'])
def test_dit_peer_has_our_dit_parameter_count(name):
  import torch  # pylint: disable=g-import-not-at-top
  config = train_step.bench_config(name, 'dit', 8)
  with torch.device('meta'):  # shapes only: DiT-XL/2 would allocate 2.7 GB
    peer = peers.dit_model(config)
  # diffusers' DiT keeps a copy of the timestep and class embedders in every block (its
  # converter copies DiT's one embedder into each); the first block's copy is the shared one
  copies = sum(p.numel() for n, p in peer.named_parameters()
               if '.norm1.emb.' in n and not n.startswith('transformer_blocks.0.'))
  depth = len(peer.transformer_blocks)
  assert copies % (depth - 1) == 0
  assert _our_parameter_count(config) == _their_parameter_count(peer) - copies


@pytest.mark.parametrize('size,latent', [('tiny', 0), ('sd15', 32)])
def test_unet_peer_has_the_parameter_count_of_our_generation_only_unet(size, latent):
  import torch  # pylint: disable=g-import-not-at-top
  config = train_step.diffdis_bench_config(size, 2, latent, 'none')
  with torch.device('meta'):
    theirs = _their_parameter_count(peers.unet_model(config))
  ours = _our_parameter_count(config)
  if size == 'sd15':
    assert ours == theirs == 859_520_964  # SD 1.5's UNet
  assert ours == theirs
