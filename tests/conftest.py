"""Test set-up: 8 virtual CPU devices (set before jax is imported) and tiny configs."""
import os
import sys

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import shutil  # noqa: E402
import tempfile  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

# One persistent XLA compilation cache per test session, shared by the pytest-xdist workers:
# many tests compile the same tiny train step (a Trainer that resumes compiles the step it
# already compiled; modules build the same configs), and a CPU compile costs seconds to a
# minute where loading the executable costs milliseconds. The controller (or a run without
# xdist) makes the folder and removes it at the end; the workers it starts inherit the path.
# jax writes each entry under a file lock, so two workers can share it. Subprocesses that
# tests start (launch/main.py, launch/study.py) do not read this variable.
_CACHE_ENV = 'DIFFDIS_TEST_COMPILE_CACHE'
_OWN_CACHE = _CACHE_ENV not in os.environ
if _OWN_CACHE:
  os.environ[_CACHE_ENV] = tempfile.mkdtemp(prefix='diffdis_test_xla_cache_')
jax.config.update('jax_compilation_cache_dir', os.environ[_CACHE_ENV])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(os.environ.pop(_CACHE_ENV), ignore_errors=True)



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
