"""Test set-up: 8 virtual CPU devices (set before jax is imported) and tiny configs."""
import os
import sys

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import pytest  # noqa: E402

from diffdis_jax.core.overrides import apply_overrides  # noqa: E402
from diffdis_jax.torch_peers import prepare_torchvision  # noqa: E402

prepare_torchvision()


def tiny_sddit_config(**overrides):
  """configs/demo.py shrunk to depth 2, width 32: compiles in seconds."""
  from configs import demo  # pylint: disable=g-import-not-at-top
  config = demo.get_config()
  config.data.image_size = 8
  config.model.input_size = 8
  config.model.width = 32
  config.model.depth = 2
  config.model.num_heads = 2
  config.model.decoder_depth = 1
  config.model.decoder_width = 32
  config.model.decoder_heads = 2
  config.model.head = dict(hidden=32, bottleneck=16, out_dim=32, num_layers=3)
  config.batch_size = 8
  config.mesh.data = -1
  config.sample.steps = 3
  config.sample.per_class = 1
  config.eval.metric_samples = 0
  return apply_overrides(config, overrides)


@pytest.fixture
def tiny_config():
  return tiny_sddit_config
