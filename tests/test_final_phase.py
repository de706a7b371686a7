"""The final phase (MaskDiT's unmasked fine-tune): the mask and the learning rate switch after
the right step, and a run resumed on either side of the switch is bit-identical."""
import os

import pytest

from conftest import tiny_sddit_config
from diffdis_jax.modes.run import build_trainer
from diffdis_jax.train import step as step_lib
from diffdis_jax.train.metrics_log import read_metrics

# 6 steps, the last half of them unmasked at another rate: steps 1-3 masked at 1e-3,
# steps 4-6 unmasked at 2e-4
PHASED = {'total_steps': 6, 'sample_every': 1000, 'log_every': 1, 'checkpoint_every': 2,
          'optim.lr': 1e-3, 'optim.warmup_steps': 0, 'sddit.mask_ratio': 0.5,
          'final_phase.fraction': 0.5, 'final_phase.lr': 2e-4}


def _records(workdir):
  return [r for r in read_metrics(workdir) if 'loss' in r]


def test_phase_start_is_the_last_fraction_of_the_steps():
  assert step_lib.final_phase_start(tiny_sddit_config(**PHASED)) == 3
  assert step_lib.final_phase_start(tiny_sddit_config(**{'final_phase.fraction': 0.0})) is None
  # a fraction too small for one step still gets one
  config = tiny_sddit_config(**{'total_steps': 10, 'final_phase.fraction': 0.01})
  assert step_lib.final_phase_start(config) == 9


def test_mask_and_learning_rate_switch_after_the_phase_start_and_resume_is_exact(tmp_path):
  straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
  build_trainer(tiny_sddit_config(**PHASED), straight).train()
  records = _records(straight)
  assert [r['step'] for r in records] == [1, 2, 3, 4, 5, 6]
  assert [r['mask_ratio_actual'] for r in records] == [0.5] * 3 + [0.0] * 3
  assert [r['lr'] for r in records] == pytest.approx([1e-3] * 3 + [2e-4] * 3)

  # stopped at the switch, then after it: each restart compiles the phase it resumes in
  build_trainer(tiny_sddit_config(**PHASED), split).train(stop_at=3)
  build_trainer(tiny_sddit_config(**PHASED), split).train(stop_at=5)
  assert sorted(os.listdir(os.path.join(split, 'checkpoints'))) == ['3', '4', '5']
  build_trainer(tiny_sddit_config(**PHASED), split).train()
  losses = lambda w: [(r['step'], r['loss'], r['mask_ratio_actual']) for r in _records(w)]
  assert losses(split) == losses(straight)
  prints = lambda w: {r['step']: r['params_fingerprint'] for r in read_metrics(w)
                      if 'params_fingerprint' in r}
  assert prints(split)[6] == prints(straight)[6]


def test_a_final_phase_without_the_discriminative_loss_leaves_the_teacher_as_it_was(tmp_path):
  """sddit.final_phase_dis_weight=0: the last steps train on denoising alone; the teacher and
  its centres stop where the main phase left them, while the student trains on."""
  import jax  # pylint: disable=g-import-not-at-top
  config = tiny_sddit_config(**PHASED, **{'sddit.final_phase_dis_weight': 0.0})
  trainer = build_trainer(config, str(tmp_path / 'run'))
  before = jax.device_get(trainer.train(stop_at=3))  # the main phase's last step
  after = jax.device_get(trainer.train())
  records = _records(str(tmp_path / 'run'))
  assert [r['step'] for r in records] == [1, 2, 3, 4, 5, 6]
  assert all(r['dis_loss'] > 0 for r in records[:3])
  assert not any('dis_loss' in r for r in records[3:])
  assert all(r['loss'] == r['gen_loss'] for r in records[3:])
  same = jax.tree.map(lambda a, b: bool((a == b).all()), before.aux, after.aux)
  assert all(jax.tree.leaves(same)) and set(before.aux) >= {'teacher', 'center_patch'}
  moved = jax.tree.map(lambda a, b: bool((a != b).any()), before.params, after.params)
  assert any(jax.tree.leaves(moved))
