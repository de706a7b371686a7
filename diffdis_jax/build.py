"""Build the model, optimizer and objective a config describes."""
from __future__ import annotations

import jax.numpy as jnp

from diffdis_jax.nn.dit import SDDiT, parse_dit_name
from diffdis_jax.objectives import get_objective

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


def compute_dtype(config):
  return DTYPES[config.compute_dtype]


def build_model(config) -> SDDiT:
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
