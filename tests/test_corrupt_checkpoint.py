"""A broken newest checkpoint: restore falls back to the newest intact one, names the broken
step in a warning, moves it aside and leaves every intact checkpoint as it was. A non-finite
state is never saved.

The state is a small hand-made TrainState (nothing compiles), saved by the real Checkpointer
with the input iterator beside it, as in training.
"""
import glob
import hashlib
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffdis_jax.data.pipeline import ArraySource, host_dataset
from diffdis_jax.train import checkpoint as ckpt_lib
from diffdis_jax.train.metrics_log import JsonlWriter
from diffdis_jax.train.state import TrainState


def _iterator():
  return iter(host_dataset(ArraySource({'x': np.arange(64)}), global_batch=4, seed=0))


def _state(step: int, fill: float = None):
  value = float(step) if fill is None else fill
  params = {'w': jnp.full((8, 4), value), 'b': jnp.arange(4.0) * step}
  return TrainState(step=jnp.int32(step), params=params, opt_state=(), ema_params=params,
                    aux=(), rng=jax.random.PRNGKey(step), skipped_steps=jnp.int32(0))


def _abstract():
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0))


def _save_three(workdir):
  """Steps 1, 2, 3, each with its fingerprint logged, as the training loop does."""
  checkpointer, data, log = ckpt_lib.Checkpointer(workdir), _iterator(), JsonlWriter(workdir)
  for step in (1, 2, 3):
    next(data)
    checkpointer.save(step, _state(step), data)
    log.write(step, {'params_fingerprint': ckpt_lib.params_fingerprint(_state(step).params)})
  checkpointer.close()


def _files(workdir, step):
  """Every file of a step and a hash of its bytes."""
  root = os.path.join(workdir, 'checkpoints', str(step))
  out = {}
  for path in sorted(glob.glob(f'{root}/**', recursive=True)):
    if os.path.isfile(path):
      with open(path, 'rb') as f:
        out[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
  return out


def _truncate_data_files(step_dir):
  for path in glob.glob(f'{step_dir}/state/**/d/*', recursive=True):
    if os.path.isfile(path):
      with open(path, 'r+b') as f:
        f.truncate(os.path.getsize(path) // 2)


def _delete_metadata(step_dir):
  os.remove(os.path.join(step_dir, 'state', '_METADATA'))


def _delete_data_item(step_dir):
  shutil.rmtree(os.path.join(step_dir, 'data'))


def _flip_parameter_bytes(step_dir):
  """Change the stored bytes without breaking the format: the params of step 2 under the
  name of step 3 (a silent corruption only the logged fingerprint can catch)."""
  step2 = os.path.join(os.path.dirname(step_dir), '2')
  shutil.rmtree(os.path.join(step_dir, 'state'))
  shutil.copytree(os.path.join(step2, 'state'), os.path.join(step_dir, 'state'))


@pytest.mark.parametrize('corrupt', [_truncate_data_files, _delete_metadata, _delete_data_item,
                                     _flip_parameter_bytes])
def test_broken_newest_checkpoint_falls_back_to_the_newest_intact(tmp_path, caplog, corrupt):
  workdir = str(tmp_path)
  _save_three(workdir)
  intact = {step: _files(workdir, step) for step in (1, 2)}
  corrupt(os.path.join(workdir, 'checkpoints', '3'))

  checkpointer, data = ckpt_lib.Checkpointer(workdir), _iterator()
  with caplog.at_level(logging.WARNING):
    state = checkpointer.restore_latest(_abstract(), data)
  assert int(state.step) == 2
  np.testing.assert_array_equal(state.params['w'], np.full((8, 4), 2.0))
  assert next(data)['x'].tolist() == _after_batches(3)  # the iterator is where step 2 left it
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any('checkpoint step 3' in w and 'cannot be restored' in w for w in warnings), warnings
  # the intact steps are untouched; the broken one is set aside, not deleted
  assert {step: _files(workdir, step) for step in (1, 2)} == intact
  assert checkpointer.all_steps() == [1, 2]
  assert [n.split('.')[0] for n in os.listdir(tmp_path / 'checkpoints_corrupt')] == ['3']
  # training goes on: step 3 can be saved again
  checkpointer.save(3, _state(3), data)
  checkpointer.close()
  assert ckpt_lib.Checkpointer(workdir).all_steps() == [1, 2, 3]


def _after_batches(n):
  data = _iterator()
  for _ in range(n - 1):
    next(data)
  return next(data)['x'].tolist()


def test_all_checkpoints_broken_starts_fresh_with_the_iterator_at_the_start(tmp_path):
  workdir = str(tmp_path)
  _save_three(workdir)
  for step in (1, 2, 3):
    _delete_metadata(os.path.join(workdir, 'checkpoints', str(step)))
  checkpointer, data = ckpt_lib.Checkpointer(workdir), _iterator()
  assert checkpointer.restore_latest(_abstract(), data) is None
  assert next(data)['x'].tolist() == _after_batches(1)
  assert checkpointer.all_steps() == []
  checkpointer.close()


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_a_non_finite_state_is_never_saved(tmp_path, bad):
  checkpointer, data = ckpt_lib.Checkpointer(str(tmp_path)), _iterator()
  checkpointer.save(1, _state(1), data)
  with pytest.raises(ckpt_lib.NonFiniteState, match='step 2'):
    checkpointer.save(2, _state(2, fill=bad), data)
  assert ckpt_lib.Checkpointer(str(tmp_path)).all_steps() == [1]
