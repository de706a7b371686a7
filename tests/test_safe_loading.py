"""Weights are read from safetensors; nothing in the package unpickles.

A pickle here is a real one whose unpickling would create a file, and torch.load / pickle.load
are replaced by functions that fail the test: a loader that tried either would be caught.
"""
import ast
import glob
import json
import os
import pickle

import numpy as np
import pytest
import safetensors.numpy

from conftest import ROOT, tiny_sddit_config
from diffdis_jax.core.checks import ConfigError
from diffdis_jax.modes.checks import check_run
from diffdis_jax.weights import convert, stable_diffusion

SUFFIXES = ['.pt', '.pth', '.bin', '.ckpt', '.pkl']


class _Unpickled:
  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return (open, (self.path, 'w'))


@pytest.fixture
def no_unpickling(monkeypatch):
  import torch  # pylint: disable=g-import-not-at-top

  def refuse(*args, **kwargs):
    raise AssertionError('a loader unpickled')
  for module, name in ((torch, 'load'), (pickle, 'load'), (pickle, 'loads')):
    monkeypatch.setattr(module, name, refuse)


def _pickle_file(path):
  with open(path, 'wb') as f:
    pickle.dump({'weight': _Unpickled(str(path) + '.UNPICKLED')}, f)
  return str(path)


@pytest.mark.parametrize('suffix', SUFFIXES)
def test_pickle_weights_are_refused_with_the_conversion_hint(tmp_path, suffix, no_unpickling):
  path = _pickle_file(tmp_path / f'model{suffix}')
  with pytest.raises(ValueError, match='convert it to safetensors first: python -c'):
    convert.load_safetensors(path)
  config = tiny_sddit_config(**{'init.dit_weights': path})
  with pytest.raises(ConfigError, match='never loaded.*convert it to safetensors'):
    check_run(config, 'train', str(tmp_path / 'run'))
  assert not os.path.exists(path + '.UNPICKLED')


def test_a_pickle_named_safetensors_is_not_unpickled(tmp_path, no_unpickling):
  path = _pickle_file(tmp_path / 'model.safetensors')
  with pytest.raises(ConfigError, match='not a safetensors file'):
    check_run(tiny_sddit_config(**{'init.dit_weights': path}), 'train',
              str(tmp_path / 'run'))
  with pytest.raises(Exception):  # safetensors' own header error
    convert.load_safetensors(path)
  assert not os.path.exists(path + '.UNPICKLED')


def test_a_diffusers_folder_with_only_pytorch_bin_is_refused(tmp_path, no_unpickling):
  unet = tmp_path / 'unet'
  unet.mkdir()
  (unet / 'config.json').write_text(json.dumps({'in_channels': 4}))
  _pickle_file(unet / 'diffusion_pytorch_model.bin')
  with pytest.raises(ValueError, match='pickle checkpoint'):
    stable_diffusion.load_stable_diffusion(str(tmp_path))
  assert not glob.glob(str(unet / '*.UNPICKLED'))


def test_weights_of_the_configured_shapes_pass_the_check(tmp_path):
  config = tiny_sddit_config()  # width 32, depth 2, patch 2, 1 channel, 10 classes
  tensors = {'x_embedder.proj.weight': np.zeros((32, 1, 2, 2), np.float32),
             'y_embedder.embedding_table.weight': np.zeros((11, 32), np.float32),
             'blocks.0.attn.qkv.bias': np.zeros((96,), np.float32),
             'blocks.1.attn.qkv.bias': np.zeros((96,), np.float32)}
  path = str(tmp_path / 'dit.safetensors')
  safetensors.numpy.save_file(tensors, path)
  config.init.dit_weights = path
  check_run(config, 'train', str(tmp_path / 'run'))
  config.model.depth = 3
  with pytest.raises(ConfigError, match=r'2 blocks \(want 3\)'):
    check_run(config, 'train', str(tmp_path / 'run'))


def _unsafe_calls(tree):
  """Calls that can unpickle: torch.load, pickle.load(s), joblib.load, dill / cloudpickle
  loads, and np.load(..., allow_pickle=True)."""
  for node in ast.walk(tree):
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
      continue
    owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ''
    name = node.func.attr
    if owner in ('torch', 'pickle', 'joblib', 'dill', 'cloudpickle') and name in ('load',
                                                                                  'loads'):
      yield f'{owner}.{name}', node.lineno
    if owner in ('np', 'numpy') and name == 'load' and any(
        k.arg == 'allow_pickle' and not (isinstance(k.value, ast.Constant) and not k.value.value)
        for k in node.keywords):
      yield 'np.load(allow_pickle=...)', node.lineno


def test_no_source_file_calls_an_unpickling_loader():
  files = glob.glob(os.path.join(ROOT, 'diffdis_jax', '**', '*.py'), recursive=True)
  files += glob.glob(os.path.join(ROOT, 'launch', '*.py'))
  assert len(files) > 20
  found = []
  for path in files:
    with open(path) as f:
      tree = ast.parse(f.read())
    found += [(os.path.relpath(path, ROOT), call, line) for call, line in _unsafe_calls(tree)]
  assert not found, found
  # the scan finds what it looks for
  assert list(_unsafe_calls(ast.parse('import torch\ntorch.load(p)\nnp.load(p, allow_pickle=1)')))
