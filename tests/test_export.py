"""The sharded steps lower for TPU and GPU from this CPU host, with the target's kernel choices.

bench/export.py's exports (the package's own jitted steps, abstract inputs carrying the
mesh's shardings) at the smallest sizes that keep every path: DiT stacks of one block,
SD 1.5's UNet cut to two levels of one layer (its widths kept), batch 8. The checks read the
exported StableHLO itself: the platform, the mesh, every argument's and result's sharding,
and which kernels the target got (nn/attention.py, nn/convolution.py, core/platform.py).
"""
import os
import re
import sys

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'bench'))
import export as bench_export  # noqa: E402  pylint: disable=wrong-import-position

from diffdis_jax.core import platform  # noqa: E402
from diffdis_jax.nn.attention import dot_product_attention  # noqa: E402

MESHES = {'data': {'data': 8, 'fsdp': 1, 'tensor': 1},
          'fsdp': {'data': 1, 'fsdp': 8, 'tensor': 1},
          'data_fsdp_tensor': {'data': 2, 'fsdp': 2, 'tensor': 2}}
_CACHE = {}


@pytest.fixture(scope='module')
def exported():
  """export(step, platform, mesh name) -> (Exported, abstract args, expected out shardings),
  each lowered once for the whole module."""
  def get(step, target, mesh):
    key = (step, target, mesh)
    if key not in _CACHE:
      config = bench_export.step_config(step, MESHES[mesh], depth=1, batch=8)
      _CACHE[key] = bench_export.export(step, config, target)
    return _CACHE[key]
  return get


def _dims(sharding_attr: str):
  """'#sdy.sharding<@mesh, [{"data", "fsdp"}, {}]>' -> [('data', 'fsdp'), ()]."""
  inner = re.search(r'#sdy\.sharding<@\w+, \[(.*?)\]>', sharding_attr).group(1)
  return [tuple(re.findall(r'"(\w+)"', dim)) for dim in re.findall(r'\{([^}]*)\}', inner)]


def module_shardings(text: str):
  """({mesh axis: size}, [each argument's dims], [each result's dims]) of `main`."""
  mesh = dict((a, int(n)) for a, n in re.findall(
      r'"(\w+)"=(\d+)', re.search(r'sdy\.mesh @\w+ = <\[([^\]]*)\]>', text).group(1)))
  start = text.index('func.func public @main(')
  signature = text[start:text.index('\n', start)]
  args, results = signature.split(') -> (', 1)
  return (mesh, [_dims(a) for a in re.split(r'%arg\d+: ', args)[1:]],
          [_dims(r) for r in results.split('tensor<')[1:]])


def expected_dims(sharding: NamedSharding, ndim: int):
  spec = tuple(sharding.spec) + (None,) * (ndim - len(sharding.spec))
  return [() if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
          for axes in spec]


def assert_lowered_with_the_mesh_shardings(result, target, mesh_name):
  """The exported module is for `target` on the mesh, each argument split as its abstract
  input says; returns (each argument's dims, each result's dims) as the module has them."""
  exp, args, _ = result
  assert exp.platforms == (target,) and exp.nr_devices == 8
  sizes, arg_dims, result_dims = module_shardings(exp.mlir_module())
  assert sizes == MESHES[mesh_name]
  assert arg_dims == [expected_dims(a.sharding, a.ndim) for a in jax.tree.leaves(args)]
  assert len(result_dims) == len(exp.out_avals)
  return arg_dims, result_dims


@pytest.mark.parametrize('mesh_name', list(MESHES))
@pytest.mark.parametrize('target', ['tpu', 'cuda'])
def test_sddit_train_step_lowers_with_the_mesh_shardings(exported, target, mesh_name):
  result = exported('sddit_train', target, mesh_name)
  arg_dims, result_dims = assert_lowered_with_the_mesh_shardings(result, target, mesh_name)
  n_state = len(jax.tree.leaves(result[1][0]))
  # the batch (image, label) split over data x fsdp; the state comes back as it went in
  # (it is donated), the metrics replicated
  assert arg_dims[n_state:] == [[('data', 'fsdp'), (), (), ()], [('data', 'fsdp')]]
  assert result_dims[:n_state] == arg_dims[:n_state]
  assert all(dims == [] for dims in result_dims[n_state:])
  mesh = MESHES[mesh_name]
  split = {axis for dims in arg_dims[:n_state] for axes in dims for axis in axes
           if mesh[axis] > 1}
  # fsdp shards parameters and optimizer state, tensor the heads and MLP widths; plain data
  # parallelism replicates them (the rules still name the axes, of size 1 there)
  assert split == {a for a in ('fsdp', 'tensor') if mesh[a] > 1}
  facts = bench_export.module_facts(result[0])
  # no CPU choice in a TPU or GPU program: jax's attention, not the einsum one
  assert facts['xla_attention'] and not facts['einsum_attention']
  assert facts['mosaic_calls'] == 0


@pytest.mark.parametrize('mesh_name', list(MESHES))
def test_splash_attention_lowers_to_the_mosaic_kernel_for_tpu(exported, mesh_name):
  result = exported('sddit_splash', 'tpu', mesh_name)
  assert_lowered_with_the_mesh_shardings(result, 'tpu', mesh_name)
  text = result[0].mlir_module()
  facts = bench_export.module_facts(result[0])
  # the compiled Pallas kernel (a Mosaic custom call), not the interpreter's HLO, and no
  # other attention: forward and backward of every block go to splash
  assert facts['mosaic_calls'] > 0 and 'mosaic' in text.lower()
  assert not facts['einsum_attention'] and not facts['xla_attention']


def test_dit_sampling_step_lowers_and_only_a_cpu_target_gets_im2col(exported):
  facts = {}
  for target in ('tpu', 'cuda', 'cpu'):
    result = exported('dit_sample', target, 'data_fsdp_tensor')
    arg_dims, result_dims = assert_lowered_with_the_mesh_shardings(result, target,
                                                                   'data_fsdp_tensor')
    # images and labels split like the sample indices
    assert arg_dims[-1] == [('data', 'fsdp')]
    assert [dims[0] for dims in result_dims] == [('data', 'fsdp')] * 2
    facts[target] = bench_export.module_facts(result[0])
  # the VAE decoder's 1x1 convolutions become matrix products for the CPU only
  assert facts['tpu']['convolutions'] == facts['cuda']['convolutions'] > 0
  assert facts['cpu']['convolutions'] < facts['tpu']['convolutions']
  assert facts['cpu']['einsum_attention'] and not facts['cpu']['xla_attention']
  assert facts['tpu']['xla_attention'] and not facts['tpu']['einsum_attention']


@pytest.mark.parametrize('target', ['tpu', 'cuda'])
def test_diffdis_sd15_train_step_lowers_without_weights(exported, target):
  result = exported('diffdis_train', target, 'data_fsdp_tensor')
  arg_dims, _ = assert_lowered_with_the_mesh_shardings(result, target, 'data_fsdp_tensor')
  assert any('tensor' in axes for dims in arg_dims for axes in dims)
  facts = bench_export.module_facts(result[0])
  assert facts['convolutions'] > 0 and facts['xla_attention']
  assert not facts['einsum_attention']


def test_the_target_is_part_of_the_jit_cache_key():
  # one jitted function traced for the CPU, then exported for TPU: a cache hit would hand
  # the TPU the CPU's einsum attention
  x = jax.ShapeDtypeStruct((1, 8, 2, 4), jnp.float32)
  fn = jax.jit(lambda q, k, v: dot_product_attention(q, k, v))
  assert platform.target_platform() == jax.default_backend() == 'cpu'
  cpu = jax.export.export(fn, platforms=['cpu'])(x, x, x).mlir_module()
  tpu = platform.export_for(fn, 'tpu', x, x, x).mlir_module()
  assert bench_export.EINSUM_ATTENTION in cpu and bench_export.EINSUM_ATTENTION not in tpu
  with platform.targeting('rocm'):
    assert platform.target_platform() == 'gpu'
  with pytest.raises(ValueError, match="platform must be one of"):
    platform.targeting('gpu').__enter__()
