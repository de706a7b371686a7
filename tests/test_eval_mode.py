"""--mode=eval, its input checks, and FID during training (eval/evaluate.py).

What is tested is the plumbing: files in, every metric and setting out. The activations come
from a stand-in feature map (a fixed random projection of the pixels, 8-d 'pool'): the real
network on CPU costs minutes here (measured: 13.5 min for this file with it, load average 6,
of which one 2048-d `scipy.linalg.sqrtm` alone took 128 s). The network itself is tested
against pytorch-fid in test_inception.py and its batching in test_fid.py; here the weights
file written the way docs/evaluation.md converts pytorch-fid's is loaded by the same path
`--mode=eval` takes.
"""
import hashlib
import json
import os
import subprocess
import sys

import flax
import numpy as np
import pytest
from safetensors.numpy import save_file

from conftest import FAST_COMPILE, ROOT, tiny_sddit_config
from diffdis_jax.core.checks import ConfigError
from diffdis_jax.eval import fid, sample_npz
from diffdis_jax.eval.eval_json import update_eval_json
from diffdis_jax.modes.checks import check_run
from diffdis_jax.modes.run import build_trainer, run
from diffdis_jax.nn import inception
from diffdis_jax.tasks.sddit import checks as sddit_checks
from diffdis_jax.train.metrics_log import read_metrics


def write_random_inception(path, seed=0):
  """pytorch-fid's key names and layouts, random values scaled to keep activations O(1)."""
  rng = np.random.default_rng(seed)
  state = {}
  for (_, *path_), leaf in flax.traverse_util.flatten_dict(inception.abstract_variables()).items():
    shape, name, kind = tuple(leaf.shape), '.'.join(path_[:-1]), path_[-1]
    if kind == 'kernel':  # (kh, kw, in, out) -> torch (out, in, kh, kw)
      w = rng.normal(0, np.sqrt(2.0 / np.prod(shape[:3])), shape)
      state[f'{name}.weight'] = w.transpose(3, 2, 0, 1)
    elif kind == 'fc_kernel':
      state['fc.weight'] = rng.normal(0, 0.05, shape).T
    elif kind == 'fc_bias':
      state['fc.bias'] = rng.normal(0, 1.0, shape)
    else:
      torch_name = {'scale': 'weight', 'bias': 'bias', 'mean': 'running_mean',
                    'var': 'running_var'}[kind]
      state[f'{name}.{torch_name}'] = np.full(shape, 1.0 if kind in ('scale', 'var') else 0.0)
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}, path)


@pytest.fixture(scope='module')
def files(tmp_path_factory):
  root = tmp_path_factory.mktemp('eval')
  weights = str(root / 'inception.safetensors')
  write_random_inception(weights)
  rng = np.random.default_rng(1)
  reference = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
  np.savez(root / 'ref.npz', arr_0=reference)  # statistics are computed from the images
  samples = np.clip(reference[:32].astype(int) // 2 + 60, 0, 255).astype(np.uint8)
  np.savez(root / 'samples.npz', arr_0=samples, arr_1=np.arange(32) % 10)
  with open(sample_npz.settings_path(str(root / 'samples.npz')), 'w') as f:
    json.dump(dict(sample_npz.sampler_settings(tiny_sddit_config()), num_samples=32,
                   checkpoint_step=7), f)
  return root, weights, stand_in_features


def stand_in_features(batch):
  """Activations of the keys the FID Inception gives, from a fixed projection of the pixels
  averaged to 8x8 (so that 16x16 references and the tiny model's 8x8 samples both fit)."""
  proj = np.random.default_rng(7).normal(size=(8 * 8 * 3, 24)).astype(np.float32)
  n, side = len(batch), batch.shape[1] // 8
  x = batch.astype(np.float32).reshape(n, 8, side, 8, side, 3).mean((2, 4)) / 255
  x = x.reshape(n, -1) @ proj
  return {'pool': x[:, :8], 'spatial': x[:, 8:14], 'logits_unbiased': x[:, 14:]}


def test_weights_file_loads_as_the_fid_inception(files):
  _, weights, _ = files
  variables = inception.load_inception_variables(weights)
  want = flax.traverse_util.flatten_dict(inception.abstract_variables())
  got = flax.traverse_util.flatten_dict(variables)
  assert set(got) == set(want)
  assert all(got[k].shape == want[k].shape for k in want)


def _config(root, weights, **overrides):
  return tiny_sddit_config(**{'eval.samples_npz': str(root / 'samples.npz'),
                              'eval.reference_npz': str(root / 'ref.npz'),
                              'eval.inception_weights': weights, **overrides})


def test_eval_mode_writes_every_metric_and_setting(files, tmp_path, monkeypatch):
  root, weights, extractor = files
  # the samples' side: digits have a classifier, which scores them beside Inception
  sixteen = {'data.image_size': 16, 'model.input_size': 16}
  config = _config(root, weights, **sixteen)
  workdir = str(tmp_path / 'run')
  update_eval_json(workdir, 'zeroshot', {'cifar10': {'zeroshot_top1': 0.5}})
  loaded = []
  monkeypatch.setattr(fid.InceptionExtractor, 'from_file', classmethod(
      lambda cls, path, **kw: loaded.append(path) or extractor))
  run('eval', config, workdir)
  assert loaded == [weights]  # the configured weights file, nothing else
  with open(os.path.join(workdir, 'eval.json')) as f:
    saved = json.load(f)
  assert saved['zeroshot'] == {'cifar10': {'zeroshot_top1': 0.5}}  # other sections are kept
  record = saved['images']
  metrics = record['metrics']
  assert {'fid', 'sfid', 'inception_score', 'precision', 'recall'} <= set(metrics)
  assert all(np.isfinite(v) for v in metrics.values())
  assert metrics['fid'] > 0 and metrics['inception_score'] >= 1.0
  assert metrics['num_samples'] == 32 and metrics['num_reference'] == 40
  assert record['sampler']['steps'] == config.sample.steps
  assert record['sampler']['checkpoint_step'] == 7  # from the sidecar of --mode=sample
  assert record['samples']['sha256'] == hashlib.sha256(
      (root / 'samples.npz').read_bytes()).hexdigest()
  assert record['reference']['file'] == str(root / 'ref.npz')
  assert record['inception_weights']['file'] == weights
  classifier = saved['classifier']
  assert set(classifier['metrics']) == {'fd_digits', 'sample_class_acc'}
  assert classifier['samples']['num_samples'] == 32
  assert classifier['samples']['sha256'] == record['samples']['sha256']

  # the reference against itself: FID about 0 and recall 1
  same = run('eval', _config(root, weights, **{'eval.samples_npz': str(root / 'ref.npz'),
                                              **sixteen}), workdir)
  assert set(same['classifier']['metrics']) == {'fd_digits'}  # a file without labels
  same = same['images']
  assert abs(same['metrics']['fid']) < 1e-6 * metrics['fid'] and same['metrics']['recall'] == 1
  assert same['sampler']['source'].startswith('config')  # no sidecar for that file


def test_fid_during_training_is_logged(files, tmp_path, monkeypatch):
  root, weights, extractor = files
  monkeypatch.setattr(fid.InceptionExtractor, 'from_file',
                      classmethod(lambda cls, path, **kw: extractor))
  config = _config(root, weights, **{
      'total_steps': 2, 'log_every': 1, 'checkpoint_every': 2, 'sample_every': 1000,
      'sddit.dis_weight': 0.0, 'sddit.mask_ratio': 0.0, 'sample.steps': 1,
      'eval.fid_every': 2, 'eval.fid_samples': 16, 'sample.batch_size': 8})
  check_run(config, 'train', str(tmp_path), 8)
  trainer = build_trainer(config, str(tmp_path))
  trainer.compiler_options = FAST_COMPILE  # halves the compile
  trainer.train()
  fids = [r for r in read_metrics(str(tmp_path)) if 'fid_16' in r]
  assert [r['step'] for r in fids] == [2] and np.isfinite(fids[0]['fid_16'])
  assert fids[0]['fid_16'] > 0

  # --mode=sample on that run's checkpoint: the EMA params restored, N images in ADM format
  config = _config(root, weights, **{'sample.steps': 1, 'sample.num_samples': 5,
                                     'sample.batch_size': 8, 'sddit.dis_weight': 0.0,
                                     'sddit.mask_ratio': 0.0})
  check_run(config, 'sample', str(tmp_path), 8)
  output = run('sample', config, str(tmp_path))
  assert output == str(tmp_path / 'samples.npz')
  with np.load(output) as npz:
    assert npz['arr_0'].shape == (5, 8, 8, 3) and npz['arr_1'].shape == (5,)
  with open(sample_npz.settings_path(output)) as f:
    assert json.load(f)['checkpoint_step'] == 2


@pytest.mark.parametrize('overrides,message', [
    ({'eval.reference_npz': '/nonexistent/ref.npz'}, 'eval.reference_npz'),
    ({'eval.reference_npz': ''}, 'eval.reference_npz is not set'),
    ({'eval.inception_weights': '/nonexistent/w.safetensors'}, 'eval.inception_weights'),
    ({'eval.samples_npz': '/nonexistent/s.npz'}, '--mode=sample'),
])
def test_missing_eval_inputs_are_named(files, tmp_path, overrides, message):
  root, weights, _ = files
  if overrides.get('eval.reference_npz') == '':
    # digits are scored by their own classifier without a reference; FID during training
    # (below) still needs one
    check_run(_config(root, weights, **overrides), 'eval', str(tmp_path))
  else:
    with pytest.raises(ConfigError, match=message):
      check_run(_config(root, weights, **overrides), 'eval', str(tmp_path))
  train = _config(root, weights, **{'eval.fid_every': 10, 'eval.fid_samples': 512, **overrides})
  if 'eval.samples_npz' not in overrides:  # training does not read a samples file
    with pytest.raises(ConfigError, match=message):
      check_run(train, 'train', str(tmp_path))


def test_sample_mode_checks(files, tmp_path):
  root, weights, _ = files
  with pytest.raises(ConfigError, match='no checkpoint'):
    check_run(tiny_sddit_config(), 'sample', str(tmp_path))
  os.makedirs(tmp_path / 'checkpoints' / '5')
  (tmp_path / 'samples.npz').write_bytes(b'')
  with pytest.raises(ConfigError, match='exists and would be overwritten'):
    check_run(tiny_sddit_config(), 'sample', str(tmp_path))
  with pytest.raises(ConfigError, match='not divisible by the data-parallel size 8'):
    check_run(tiny_sddit_config(**{'sample.batch_size': 12}), 'sample', str(tmp_path / 'other'),
              8)
  # a latent model (its data checks aside: digits are pixels) needs the VAE to decode samples
  latent = tiny_sddit_config(**{'model.in_channels': 4, 'sample.output': str(tmp_path / 'x.npz')})
  with pytest.raises(ConfigError, match='sample.vae=DIR'):
    sddit_checks.check_mode(latent, 'sample', str(tmp_path), None)


def test_cli_missing_reference_is_one_line_exit_2(files, tmp_path):
  root, weights, _ = files
  args = [sys.executable, os.path.join(ROOT, 'launch', 'main.py'),
          '--config=' + os.path.join(ROOT, 'configs', 'demo.py'), '--mode=eval',
          f'--workdir={tmp_path}', f'--config.eval.samples_npz={root / "samples.npz"}',
          f'--config.eval.inception_weights={weights}',
          '--config.eval.reference_npz=/nonexistent/VIRTUAL_imagenet256_labeled.npz']
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  lines = result.stderr.strip().splitlines()
  assert lines[-1].startswith('error: eval.reference_npz=') and 'does not exist' in lines[-1]
  assert not os.path.exists(tmp_path / 'eval.json')
