"""The teacher's collapse diagnostics: exact on hand-made targets, and in a toy run they flag
the collapse that DINO warns of (no centring, a very sharp teacher) and not the defaults."""
import math

import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_sddit_config
from diffdis_jax.modes.run import build_trainer
from diffdis_jax.objectives import sddit
from diffdis_jax.train.metrics_log import read_metrics

K = 8


def _one_hot(indices):
  return jnp.eye(K)[jnp.asarray(indices)][None]   # (1, tokens, K)


def test_diagnostics_of_hand_made_targets():
  # every token on prototype 3: sharp and collapsed
  d = sddit.teacher_diagnostics(_one_hot([3] * 16))
  assert float(d['teacher_entropy']) == pytest.approx(0.0, abs=1e-6)
  assert float(d['teacher_usage_entropy']) == pytest.approx(0.0, abs=1e-6)
  assert float(d['teacher_prototypes_won']) == 1
  # sharp, and every prototype used alike: healthy
  d = sddit.teacher_diagnostics(_one_hot(list(range(K)) * 2))
  assert float(d['teacher_usage_entropy']) == pytest.approx(math.log(K), rel=1e-5)
  assert float(d['teacher_prototypes_won']) == K
  # uniform targets: no prototype preferred, every token's entropy log K
  d = sddit.teacher_diagnostics(jnp.full((2, 5, K), 1.0 / K))
  assert float(d['teacher_entropy']) == pytest.approx(math.log(K), rel=1e-5)
  # two prototypes, 3 tokens to 1
  d = sddit.teacher_diagnostics(_one_hot([0, 0, 0, 5]))
  assert float(d['teacher_usage_entropy']) == pytest.approx(
      -(0.75 * np.log(0.75) + 0.25 * np.log(0.25)), rel=1e-5)
  assert float(d['teacher_prototypes_won']) == 2

  log_k = math.log(K)
  verdict = lambda token, usage: sddit.collapse_verdict(
      {'teacher_entropy': token, 'teacher_usage_entropy': usage}, K)
  assert verdict(0.1, 0.0) == 'dominant'
  assert verdict(log_k, log_k) == 'uniform'
  assert verdict(0.5, 0.9 * log_k) == 'healthy'


def _last_diagnostics(workdir, **overrides):
  config = tiny_sddit_config(**{'total_steps': 60, 'log_every': 20, 'checkpoint_every': 60,
                                'sample_every': 1000, 'batch_size': 32,
                                'optim.warmup_steps': 5, **overrides})
  build_trainer(config, str(workdir)).train()
  logged = [r for r in read_metrics(str(workdir)) if 'teacher_usage_entropy' in r]
  assert [r['step'] for r in logged] == [20, 40, 60]
  for r in logged:  # KL = cross-entropy - the targets' entropy, so never below zero
    assert r['dis_patch_kl'] >= -1e-4
  return logged[-1], config.model.head.out_dim


def test_toy_run_flags_collapse_without_centring_and_not_with_the_defaults(tmp_path):
  healthy, k = _last_diagnostics(tmp_path / 'defaults')
  assert sddit.collapse_verdict(healthy, k) == 'healthy', healthy
  # centring off (the centre stays at its initial zero) and a teacher 40x sharper
  collapsed, k = _last_diagnostics(tmp_path / 'collapse', **{
      'sddit.center_momentum': 1.0, 'sddit.teacher_temp': 1e-3,
      'sddit.teacher_temp_warmup_start': 1e-3})
  assert sddit.collapse_verdict(collapsed, k) == 'dominant', collapsed
  assert collapsed['teacher_prototypes_won'] < healthy['teacher_prototypes_won'] / 2
