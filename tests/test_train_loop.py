"""End-to-end training: the loss falls, and save / restore / continue is bit-identical."""
import json
import os

import jax
import numpy as np

from conftest import tiny_sddit_config
from diffdis_jax.modes.run import build_trainer
from diffdis_jax.objectives import sddit
from diffdis_jax.train.workdir import WorkdirMismatch, check_identity
from diffdis_jax.train.metrics_log import read_metrics

# total_steps shapes SD-DiT's step (the teacher momentum's schedule spans it), so the tests
# below that train a few steps share one total_steps and stop early with `stop_at`: one
# compile, then hits in the session's compilation cache
SHARED_STEP = {'total_steps': 6, 'sample_every': 1000}


def _fingerprints(workdir):
  return {r['step']: r['params_fingerprint'] for r in read_metrics(workdir)
          if 'params_fingerprint' in r}


def test_demo_loss_falls_over_a_few_dozen_steps(tmp_path):
  config = tiny_sddit_config(**{'total_steps': 60, 'log_every': 10, 'checkpoint_every': 60,
                                'sample_every': 60, 'optim.warmup_steps': 5, 'batch_size': 32,
                                'eval.metric_samples': 40})
  build_trainer(config, str(tmp_path)).train()
  records = [r for r in read_metrics(str(tmp_path)) if 'loss' in r]
  assert [r['step'] for r in records] == list(range(10, 61, 10))
  gen = [r['gen_loss'] for r in records]  # means over 10 steps
  assert gen[-1] < 0.8 * gen[0], gen
  assert all(np.isfinite(r['loss']) for r in records)
  final = [r for r in read_metrics(str(tmp_path)) if 'fd_digits' in r]
  assert len(final) == 1 and final[0]['step'] == 60
  assert np.isfinite(final[0]['fd_digits']) and 0 <= final[0]['sample_class_acc'] <= 1
  # a sample grid was written, as PNG and for TensorBoard
  assert os.listdir(tmp_path / 'samples') == ['step_00000060.png']
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path))


def test_save_restore_continue_is_bit_identical(tmp_path):
  overrides = {**SHARED_STEP, 'log_every': 1, 'checkpoint_every': 3}
  straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
  build_trainer(tiny_sddit_config(**overrides), straight).train()
  build_trainer(tiny_sddit_config(**overrides), split).train(stop_at=3)
  assert sorted(os.listdir(os.path.join(split, 'checkpoints')))[-1] == '3'
  state = build_trainer(tiny_sddit_config(**overrides), split).train()
  assert int(state.step) == 6
  a, b = _fingerprints(straight), _fingerprints(split)
  assert a[6] == b[6] and a[3] == b[3]
  # the merged log has every step once, and the same losses as the uninterrupted run
  losses = lambda w: [(r['step'], r['loss']) for r in read_metrics(w) if 'loss' in r]
  assert losses(split) == losses(straight)
  assert [s for s, _ in losses(split)] == list(range(1, 7))


def test_resume_drops_log_lines_past_the_checkpoint(tmp_path):
  config = tiny_sddit_config(**SHARED_STEP, log_every=1, checkpoint_every=2)
  build_trainer(config, str(tmp_path)).train(stop_at=2)
  with open(tmp_path / 'metrics.jsonl', 'a') as f:  # what a run killed after step 2 left
    f.write(json.dumps({'step': 3, 'loss': 1.0}) + '\n{"step": 4, "lo')
  build_trainer(config, str(tmp_path)).train(stop_at=3)
  steps = [r['step'] for r in read_metrics(str(tmp_path)) if 'loss' in r]
  assert steps == [1, 2, 3]


def test_workdir_of_another_model_is_refused(tmp_path):
  config = tiny_sddit_config(**SHARED_STEP)
  build_trainer(config, str(tmp_path)).train(stop_at=2)
  before = sorted(os.listdir(tmp_path / 'checkpoints'))
  other = tiny_sddit_config(**SHARED_STEP, **{'model.width': 64})
  try:
    check_identity(other, sddit, str(tmp_path))
    raise AssertionError('expected WorkdirMismatch')
  except WorkdirMismatch as e:
    assert 'model' in str(e)
  # the training run itself refuses it before touching anything
  try:
    build_trainer(other, str(tmp_path)).train()
    raise AssertionError('expected WorkdirMismatch')
  except WorkdirMismatch:
    pass
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == before
  # so is a total_steps below the saved step: resuming would log step 2's scores as step 1's
  log = (tmp_path / 'metrics.jsonl').read_text()
  try:
    build_trainer(tiny_sddit_config(total_steps=1, sample_every=1000), str(tmp_path)).train()
    raise AssertionError('expected WorkdirMismatch')
  except WorkdirMismatch as e:
    assert 'step 2, past total_steps=1' in str(e)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == before
  assert (tmp_path / 'metrics.jsonl').read_text() == log
  assert jax.device_count() == 8  # the suite runs on 8 virtual devices
