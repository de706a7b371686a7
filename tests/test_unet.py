"""SD UNet2DCondition: parity with diffusers' UNet2DConditionModel (SD 1.x- and 2.x-like)."""
import jax
import numpy as np
import pytest
import torch
from diffusers import UNet2DConditionModel

from diffdis_jax import weights
from diffdis_jax.nn.unet_blocks import upsample_nearest
from peer_utils import assert_close, nchw, nhwc, randomize, state_dict_numpy

# SD 1.x shape in miniature: conv projections, one head count everywhere.
SD1_LIKE = dict(
    in_channels=4, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
    down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
    up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'),
    attention_head_dim=2, cross_attention_dim=24, norm_num_groups=8)

# SD 2.x shape in miniature: linear projections, per-level head counts, a down level
# without attention, two transformer blocks in the first level, two ResNets per level.
SD2_LIKE = dict(
    in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=2,
    down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
    up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'),
    attention_head_dim=(2, 4), use_linear_projection=True, cross_attention_dim=24,
    transformer_layers_per_block=(2, 1), norm_num_groups=8)


# sd1_like gets one scalar timestep (broadcast over the batch); sd2_like one per sample and an
# odd latent height, which the up path must restore from the skip sizes (9 -> 5 -> 9).
@pytest.mark.parametrize('config,shape,t', [(SD1_LIKE, (2, 8, 8), 10.0),
                                            (SD2_LIKE, (2, 9, 8), [10.0, 700.0])],
                         ids=['sd1_like', 'sd2_like_odd_size'])
def test_unet_matches(config, shape, t):
  torch.manual_seed(0)
  peer = randomize(UNet2DConditionModel(**config))
  module, params = weights.from_diffusers_unet(dict(peer.config), state_dict_numpy(peer))
  rng = np.random.default_rng(0)
  x = rng.standard_normal(shape + (4,)).astype(np.float32)
  t = np.asarray(t, np.float32)
  context = rng.standard_normal((2, 7, 24)).astype(np.float32)
  out = jax.jit(module.apply)({'params': params}, x, t, context)
  with torch.no_grad():
    theirs = peer(nchw(x), torch.from_numpy(np.broadcast_to(t, (2,)).copy()),
                  torch.from_numpy(context)).sample
  assert out.shape == x.shape
  assert_close(out, nhwc(theirs))


def test_unsupported_unet_config_is_refused():
  with pytest.raises(ValueError, match='class_embed_type'):
    weights.from_diffusers_unet({**SD1_LIKE, 'class_embed_type': 'timestep'}, {})


def test_upsample_nearest_matches_torch():
  x = np.random.default_rng(0).standard_normal((1, 3, 5, 2)).astype(np.float32)
  for size in [(6, 10), (5, 9), (7, 11)]:
    theirs = torch.nn.functional.interpolate(nchw(x), size=size, mode='nearest')
    np.testing.assert_array_equal(upsample_nearest(x, size), nhwc(theirs))
