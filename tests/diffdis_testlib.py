"""Shared tiny DiffDis set-up for the DiffDis tests: model, parameters without compiling
`init`, and a config."""
import functools

import flax.linen as nn
import jax
import numpy as np
from flax import traverse_util

from configs.diffdis_common import diffdis_defaults
from diffdis_jax.nn.diffdis import DiffDisUNet, init_inputs

# One attention level with two transformer layers (a text FFN per layer) plus the mid block
# exercise every code path; a second attention level would double the compile time.
UNET = dict(block_out_channels=(16, 32), layers_per_block=1,
            down_block_types=('CrossAttnDownBlock2D', 'DownBlock2D'),
            up_block_types=('UpBlock2D', 'CrossAttnUpBlock2D'),
            attention_head_dim=2, transformer_layers_per_block=(2, 1), norm_num_groups=8)
TEXT_DIM, CTX_LEN, CTX_DIM, SIDE = 8, 5, 16, 8


def tiny_model(**kw):
  return DiffDisUNet(**UNET, text_dim=TEXT_DIM, head_blocks=1, **kw)


def abstract_params(model):
  """Boxed ShapeDtypeStructs of every parameter (traced, not compiled)."""
  inputs = init_inputs(model, SIDE, CTX_LEN, CTX_DIM)
  return jax.eval_shape(lambda r: model.init(r, *inputs, method='initialize'),
                        jax.random.PRNGKey(0))['params']


@functools.lru_cache(maxsize=None)
def _random_params(seed: int, **kw):
  """Seeded random values in the shapes of tiny_model(**kw)'s parameters.

  Compiling `init` for the UNet costs as much as a forward pass; tests need only reasonable
  values: kernels ~ N(0, 1/fan_in), biases ~ N(0, 0.01), norm scales ~ 1 + N(0, 0.01).
  """
  model = tiny_model(**kw)
  flat = traverse_util.flatten_dict(nn.unbox(abstract_params(model)))
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in flat.items():
    shape = leaf.shape
    if path[-1] == 'logit_scale':
      value = np.full(shape, np.log(1 / 0.07))
    elif path[-1] == 'scale':
      value = 1 + 0.1 * rng.standard_normal(shape)
    elif len(shape) >= 2:
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
    else:
      value = 0.1 * rng.standard_normal(shape)
    out[path] = value.astype(np.float32)
  return traverse_util.unflatten_dict(out)


def random_params(seed: int = 0, **kw):
  return jax.tree.map(np.copy, _random_params(seed, **kw))


def tiny_config(**diffdis_overrides):
  import ml_collections  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict()
  config.diffdis = diffdis_defaults()
  config.diffdis.text_dim = TEXT_DIM
  config.diffdis.context_length = CTX_LEN
  config.diffdis.context_dim = CTX_DIM
  config.diffdis.head_blocks = 1
  for k, v in diffdis_overrides.items():
    node = config.diffdis
    *path, last = k.split('.')
    for part in path:
      node = node[part]
    node[last] = v
  return config


def tiny_batch(batch: int = 4, seed: int = 0):
  rng = np.random.default_rng(seed)
  query = rng.standard_normal((batch, TEXT_DIM)).astype(np.float32)
  return {
      'image': rng.standard_normal((batch, SIDE, SIDE, 4)).astype(np.float32),
      'context': rng.standard_normal((batch, CTX_LEN, CTX_DIM)).astype(np.float32),
      'query': query / np.linalg.norm(query, axis=1, keepdims=True),
      'label': np.arange(batch, dtype=np.int32) % 2,
  }
