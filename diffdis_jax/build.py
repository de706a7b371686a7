"""Build the model a config describes (one builder per method)."""
from __future__ import annotations

import jax.numpy as jnp

from diffdis_jax.nn.dit import SDDiT, parse_dit_name
from diffdis_jax.objectives import get_objective

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
# config.model fields of a DiffDis config that are UNet2DCondition fields (diffusers' names)
UNET_FIELDS = ('block_out_channels', 'down_block_types', 'up_block_types', 'layers_per_block',
               'attention_head_dim', 'transformer_layers_per_block', 'norm_num_groups',
               'use_linear_projection')


def unet_fields(model_config) -> dict:
  """config.model's UNet fields (diffusers' names), sequences as tuples."""
  m = model_config
  return {k: tuple(m[k]) if isinstance(m[k], (list, tuple)) else m[k] for k in UNET_FIELDS}


def compute_dtype(config):
  return DTYPES[config.compute_dtype]


def build_sddit(config) -> SDDiT:
  """The SDDiT of `config.model`; the projection head exists only when the teacher is used."""
  m = config.model
  depth, width, heads, patch = parse_dit_name(m.name)
  head = dict(m.head) if get_objective(config.method).uses_teacher(config) else None
  return SDDiT(
      input_size=m.input_size, in_channels=m.in_channels, patch=patch,
      width=m.width or width, depth=m.depth or depth, num_heads=m.num_heads or heads,
      num_classes=m.num_classes, learn_sigma=m.learn_sigma, decoder_mode=m.decoder_mode,
      decoder_depth=m.decoder_depth, decoder_width=m.decoder_width,
      decoder_heads=m.decoder_heads, infill=m.infill, head=head,
      attention_impl=m.attention_impl, remat=m.remat, dtype=compute_dtype(config))


def build_diffdis(config):
  """The DiffDisUNet of `config.model` (UNet fields) and `config.diffdis` (text stream)."""
  from diffdis_jax.nn.diffdis import DiffDisUNet  # pylint: disable=g-import-not-at-top
  m, d = config.model, config.diffdis
  unet = unet_fields(m)
  return DiffDisUNet(
      in_channels=m.in_channels, out_channels=m.in_channels, **unet, text_dim=d.text_dim,
      align=d.align_mode, head_blocks=d.head_blocks, image_null=d.image_null,
      logit_scale_init=d.logit_scale_init, attention_impl=m.attention_impl,
      conv_impl=m.conv_impl, remat=m.remat, dtype=compute_dtype(config))


MODEL_BUILDERS = {'sddit': build_sddit, 'diffdis': build_diffdis}


def build_model(config):
  return MODEL_BUILDERS[config.method](config)
