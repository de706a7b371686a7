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

from diffdis_jax.core.overrides import apply_overrides  # noqa: E402
from diffdis_jax.torch_peers import prepare_torchvision  # noqa: E402

prepare_torchvision()

# One persistent XLA compilation cache per test session, shared by the pytest-xdist workers:
# many tests compile the same tiny train step (a Trainer that resumes compiles the step it
# already compiled; modules build the same configs), and a CPU compile costs seconds to a
# minute where loading the executable costs milliseconds. The controller (or a run without
# xdist) makes the folder and removes it at the end; the workers it starts inherit the path.
# jax writes each entry under a file lock, so two workers can share it. Subprocesses that
# tests start (launch/main.py, launch/study.py) do not read this variable.
COMPILE_CACHE_ENV = 'DIFFDIS_TEST_COMPILE_CACHE'
_OWN_CACHE = COMPILE_CACHE_ENV not in os.environ
if _OWN_CACHE:
  os.environ[COMPILE_CACHE_ENV] = tempfile.mkdtemp(prefix='diffdis_test_xla_cache_')
jax.config.update('jax_compilation_cache_dir', os.environ[COMPILE_CACHE_ENV])
jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def pytest_unconfigure(config):
  del config
  if _OWN_CACHE:
    shutil.rmtree(os.environ.pop(COMPILE_CACHE_ENV), ignore_errors=True)


# The files that take minutes on 2 cores, most expensive first (`make test --durations`).
# They run first, so that each xdist worker ends on short files rather than one worker
# starting a long file while the other idles.
HEAVY_FIRST = (
    'test_objective_modes.py', 'test_study.py', 'test_diffdis_train.py', 'test_fmnist_recipe.py',
    'test_diffdis_model.py', 'test_diffdis_pairs.py',
    'test_classifier_metric.py', 'test_diffdis_eval.py', 'test_train_loop.py',
    'test_resume.py', 'test_main.py', 'test_export.py', 'test_convolution.py',
    'test_compute_dtype.py', 'test_bench_tiny.py', 'test_final_phase.py',
    'test_disk_full_run.py', 'test_sddit_collapse.py', 'test_kill_during_save.py',
)


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: files stay whole


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  """`-n 2` alone hands out whole files (--dist loadfile) in the order above.

  xdist's default (--dist load) splits a file's tests across the workers, so each worker
  builds the file's module fixtures (a trained classifier, a trained DiffDis run) once: the
  same minutes twice. An explicit --dist on the command line is kept.
  """
  from xdist.scheduler import LoadFileScheduling  # pylint: disable=g-import-not-at-top
  explicit = any(str(a).startswith('--dist') for a in config.invocation_params.args)
  if config.getoption('dist') != 'load' or explicit:
    return None
  config.option.loadscopereorder = False  # HEAVY_FIRST's order, not the most tests first
  return LoadFileScheduling(config, log)


# XLA:CPU without LLVM's optimisations: compiles in about half the time, runs slower; what
# tests that compile a train step or a gradient once and run it a few times want
FAST_COMPILE = {'xla_backend_optimization_level': 0}


def compile_fast(fn, *args):
  """jax.jit(fn) compiled for `args` with FAST_COMPILE."""
  return jax.jit(fn).lower(*args).compile(FAST_COMPILE)


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
