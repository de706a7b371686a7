"""Test set-up: 8 virtual CPU devices (set before jax is imported) and tiny configs."""
import os
import sys

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402

from diffdis_jax.torch_peers import prepare_torchvision  # noqa: E402

prepare_torchvision()


def tiny_sddit_config(**overrides):
  """configs/demo.py shrunk to depth 2, width 32: compiles in seconds."""
  from configs import demo  # pylint: disable=g-import-not-at-top
  c = demo.get_config()
  c.data.image_size = 8
  c.model.input_size = 8
  c.model.width = 32
  c.model.depth = 2
  c.model.num_heads = 2
  c.model.decoder_depth = 1
  c.model.decoder_width = 32
  c.model.decoder_heads = 2
  c.model.head = dict(hidden=32, bottleneck=16, out_dim=32, num_layers=3)
  c.batch_size = 8
  c.mesh.data = -1
  c.sample.steps = 3
  c.sample.per_class = 1
  c.eval.digits_samples = 0
  return apply_overrides(c, overrides)


def apply_overrides(config, overrides: dict):
  """config with each dotted key ('model.width') of `overrides` set; returns the config."""
  for key, value in overrides.items():
    node = config
    *path, last = key.split('.')
    for part in path:
      node = node[part]
    node[last] = value
  return config


@pytest.fixture
def tiny_config():
  return tiny_sddit_config
