"""Every run mode on each objective that is not EDM's (EDM's are test_train_loop,
test_sample_npz, test_eval_mode): train with an exact resume, grid, sample, eval, and for a
DDPM-trained DiT, export to diffusers.

Two tiny models on the demo's digits: DiT on DDPM (DiT's objective, learned variance, sampled
by the DDPM sampler that serves DiT's released weights) and SD-DiT in MaskDiT's layout (a
separate decoder, a mask, the teacher) on SiT's flow.
"""
import json
import os

import numpy as np
import pytest
import torch
from diffusers import DiTTransformer2DModel

from conftest import FAST_COMPILE, tiny_sddit_config
from diffdis_jax.core.checks import ConfigError
from diffdis_jax.eval import sample_npz
from diffdis_jax.modes.checks import check_run
from diffdis_jax.modes.run import build_trainer, run
from diffdis_jax.train.metrics_log import read_metrics
from peer_utils import assert_close, nchw, nhwc

STEPS = {'total_steps': 4, 'log_every': 1, 'checkpoint_every': 2, 'sample_every': 1000,
         'optim.warmup_steps': 0, 'sample.guidance': 1.5, 'sample.num_samples': 8,
         'sample.batch_size': 8}
CASES = {
    'dit_ddpm': {'objective': 'ddpm', 'model.learn_sigma': True, 'model.time_freq_shift': 1.0,
                 'model.decoder_mode': 'split', 'model.decoder_depth': 0,
                 'sddit.dis_weight': 0.0, 'sddit.mask_ratio': 0.0, 'sample.respacing': '6',
                 'sample.guidance_channels': 1},
    'sddit_flow': {'objective': 'flow', 'flow.t_distribution': 'logit_normal',
                   'sddit.dis_weight': 1.0, 'sddit.mask_ratio': 0.25,
                   'sample.solver': 'euler_maruyama', 'sample.steps': 4},
}


@pytest.fixture(scope='module')
def classifier_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('digits_classifier'))


def _config(case, classifier_dir, **overrides):
  return tiny_sddit_config(**{**STEPS, **CASES[case], 'eval.classifier_dir': classifier_dir,
                              **overrides})


def _run(mode, config, workdir):
  check_run(config, mode, workdir, 8)   # what launch/main.py does first
  return run(mode, config, workdir)


def _train(config, workdir, stop_at=None):
  """--mode=train, its step compiled with FAST_COMPILE (both runs compared alike)."""
  check_run(config, 'train', workdir, 8)
  trainer = build_trainer(config, workdir)
  trainer.compiler_options = FAST_COMPILE
  trainer.train(stop_at=stop_at)


@pytest.mark.parametrize('case', sorted(CASES))
def test_every_mode_on_the_objective(case, classifier_dir, tmp_path):
  config = _config(case, classifier_dir)
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  _train(config, straight)
  _train(config, resumed, stop_at=2)
  _train(config, resumed)   # resumes from step 2
  losses = lambda w: [(r['step'], r['loss']) for r in read_metrics(w) if 'loss' in r]
  prints = lambda w: {r['step']: r['params_fingerprint'] for r in read_metrics(w)
                      if 'params_fingerprint' in r}
  assert [s for s, _ in losses(resumed)] == [1, 2, 3, 4]
  assert losses(resumed) == losses(straight)   # bit-identical: losses and parameters
  assert prints(resumed)[4] == prints(straight)[4] and prints(resumed)[2] == prints(straight)[2]
  assert all(np.isfinite(loss) for _, loss in losses(resumed))

  grid = _run('grid', config, resumed)
  assert os.path.getsize(grid) > 0
  output = _run('sample', config, resumed)
  with np.load(output) as npz:
    images = npz['arr_0']
  assert images.shape == (8, 8, 8, 3) and len({im.tobytes() for im in images}) == 8
  with open(sample_npz.settings_path(output)) as f:
    settings = json.load(f)
  want = {'dit_ddpm': ('ddpm', 'ancestral'), 'sddit_flow': ('flow', 'euler_maruyama')}[case]
  assert (settings['parameterization'], settings['solver']) == want
  assert settings['checkpoint_step'] == 4
  scores = _run('eval', config, resumed)['classifier']
  assert set(scores['metrics']) == {'fd_digits', 'sample_class_acc'}
  assert scores['sampler']['parameterization'] == want[0]

  if case == 'sddit_flow':   # MaskDiT's layout has a second decoder stack: not a DiT
    with pytest.raises(ConfigError, match='separate decoder'):
      check_run(config, 'export', resumed, 8)
    return
  folder = _run('export', config, resumed)
  theirs = DiTTransformer2DModel.from_pretrained(folder).eval()
  trainer = build_trainer(config, resumed)
  state = trainer.restore_latest()
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 8, 8, 1)).astype(np.float32)
  t, y = np.array([5, 700]), np.array([3, 10])
  ours = trainer.model.apply({'params': state.ema_params}, x, t.astype(np.float32), y)
  with torch.no_grad():
    out = theirs(nchw(x), timestep=torch.from_numpy(t), class_labels=torch.from_numpy(y)).sample
  assert_close(ours, nhwc(out), tol=1e-4)
  with pytest.raises(ConfigError, match='already holds an export'):
    check_run(config, 'export', resumed, 8)


@pytest.mark.parametrize('overrides,mode,message', [
    ({'objective': 'vp'}, 'train', "objective='vp' is not one of"),
    ({'objective': 'flow'}, 'train', "learn_sigma=True does not fit objective='flow'"),
    ({'model.learn_sigma': False}, 'train', "learn_sigma=False does not fit objective='ddpm'"),
    ({'sample.parameterization': 'edm'}, 'train', "does not belong to objective='ddpm'"),
    ({'sample.solver': 'heun'}, 'train', 'sample.solver=.heun. does not belong'),
    ({'sample.guidance_channels': 2}, 'sample', 'model.in_channels=1'),
    ({'objective': 'flow', 'model.learn_sigma': False, 'flow.t_distribution': 'beta'},
     'train', 'flow.t_distribution'),
    ({}, 'export', 'no checkpoint under'),
    ({'model.time_freq_shift': 0.0}, 'export', 'time_freq_shift=1 to export'),
])
def test_bad_objective_input_is_one_line(classifier_dir, tmp_path, overrides, mode, message):
  config = _config('dit_ddpm', classifier_dir, **overrides)
  with pytest.raises(ConfigError, match=message) as info:
    check_run(config, mode, str(tmp_path / 'run'), 8)
  assert '\n' not in str(info.value)
  assert not os.path.exists(tmp_path / 'run')   # nothing written


def test_a_workdir_of_another_objective_is_refused(classifier_dir, tmp_path):
  """An identity saved before `objective` existed reads as EDM's (every such run was)."""
  workdir = tmp_path / 'run'
  workdir.mkdir()
  config = _config('dit_ddpm', classifier_dir)
  from diffdis_jax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  from diffdis_jax.objectives import sddit  # pylint: disable=g-import-not-at-top
  old = workdir_lib.identity(config, sddit)
  del old['objective']
  old['model'].pop('time_freq_shift')
  (workdir / workdir_lib.IDENTITY_FILE).write_text(json.dumps(old))
  with pytest.raises(ConfigError, match="objective: 'edm' in the workdir, 'ddpm' here"):
    check_run(config, 'train', str(workdir), 8)
  edm = _config('dit_ddpm', classifier_dir, **{'objective': 'edm', 'model.learn_sigma': False,
                                               'model.time_freq_shift': 0.0})
  old['model']['learn_sigma'] = False
  (workdir / workdir_lib.IDENTITY_FILE).write_text(json.dumps(old))
  check_run(edm, 'train', str(workdir), 8)   # the old EDM run goes on
