"""The DiffDisUNet a DiffDis config describes.

`config.model` holds the UNet's fields under diffusers' names (so an SD folder's
unet/config.json can be compared with it field by field), `config.diffdis` the text stream's.
"""
from __future__ import annotations

from diffdis_jax.nn.diffdis import DiffDisUNet
from diffdis_jax.tasks.base import compute_dtype

# config.model fields that are UNet2DCondition fields (diffusers' names)
UNET_FIELDS = ('block_out_channels', 'down_block_types', 'up_block_types', 'layers_per_block',
               'attention_head_dim', 'transformer_layers_per_block', 'norm_num_groups',
               'use_linear_projection')


def unet_fields(model_config) -> dict:
  """config.model's UNet fields (diffusers' names), sequences as tuples."""
  m = model_config
  return {k: tuple(m[k]) if isinstance(m[k], (list, tuple)) else m[k] for k in UNET_FIELDS}


def build_diffdis(config) -> DiffDisUNet:
  """The DiffDisUNet of `config.model` (UNet fields) and `config.diffdis` (text stream)."""
  m, d = config.model, config.diffdis
  return DiffDisUNet(
      in_channels=m.in_channels, out_channels=m.in_channels, **unet_fields(m),
      text_dim=d.text_dim, align=d.align_mode, head_blocks=d.head_blocks,
      image_null=d.image_null, logit_scale_init=d.logit_scale_init,
      attention_impl=m.attention_impl, conv_impl=m.conv_impl, remat=m.remat,
      dtype=compute_dtype(config))
