"""DiffDis from a pretrained generator (init.pretrained_generator): the fine-tune starts
generating exactly as the generation-only run it starts from, reads that run's folder without
changing a byte of it, and a generator that does not fit the config is refused in one line."""
import hashlib
import os
import shutil

import jax
import numpy as np
import pytest

from conftest import compile_fast
from diffdis_jax.core.checks import ConfigError
from diffdis_jax.modes.checks import check_run
from diffdis_jax.modes.run import build_trainer
from diffdis_jax.nn.diffdis import split_params
from diffdis_jax.objectives import diffdis as objective
from diffdis_jax.train import checkpoint as ckpt_lib
from diffdis_jax.train import workdir as workdir_lib
from diffdis_jax.train.metrics_log import JsonlWriter
from test_diffdis_train import tiny_demo_config

SAVED_STEP = 2
# the text encoder only has to be the same one on both sides, not a good one
TEXT = {'text_encoder.pretrain_steps': 10}


def finetune_config(generator_dir, **overrides):
  return tiny_demo_config(**{**TEXT, 'init.pretrained_generator': str(generator_dir),
                             **overrides})


def _folder_digest(folder) -> dict:
  """{relative path: sha256} of every file under `folder`, and every folder (as 'dir')."""
  out = {}
  for root, dirs, names in os.walk(folder):
    for d in dirs:
      out[os.path.relpath(os.path.join(root, d), folder)] = 'dir'
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


@pytest.fixture(scope='module')
def generator(tmp_path_factory):
  """A generation-only run's workdir as training leaves it: run_identity.json, config.json,
  its text encoder's cache, a checkpoint at SAVED_STEP whose params and EMA differ (both
  moved away from the initialisation) and the params' fingerprint in metrics.jsonl; plus
  what a reader must leave alone: a save in progress and a newer checkpoint that does not
  read back."""
  workdir = tmp_path_factory.mktemp('generator')
  config = tiny_demo_config(**TEXT, **{'diffdis.align_mode': 'none'})
  trainer = build_trainer(config, str(workdir))
  state = jax.device_get(trainer.init_state())
  rng = np.random.default_rng(0)
  moved = lambda tree, scale: jax.tree.map(
      lambda x: x + scale * rng.standard_normal(x.shape).astype(x.dtype), tree)
  params = moved(state.params, 0.05)
  state = state.replace(params=params, ema_params=moved(params, 0.05), step=SAVED_STEP)
  workdir_lib.write_identity(config, objective, str(workdir))
  checkpointer = ckpt_lib.Checkpointer(str(workdir))
  checkpointer.save(SAVED_STEP, jax.device_put(state, trainer.state_shardings),
                    trainer.data_iterator())
  checkpointer.close()
  JsonlWriter(str(workdir)).write(SAVED_STEP, {
      'params_fingerprint': ckpt_lib.params_fingerprint(state.params)})
  steps = workdir / 'checkpoints'
  in_progress = steps / f'{SAVED_STEP + 1}.orbax-checkpoint-tmp-1'
  in_progress.mkdir()
  (in_progress / 'partial').write_text('a save that is still being written')
  broken = steps / str(SAVED_STEP + 2)
  shutil.copytree(steps / str(SAVED_STEP), broken)
  for root, _, names in os.walk(broken / 'state'):
    for name in names:
      if name.startswith('manifest'):
        os.remove(os.path.join(root, name))
  return workdir, config, trainer.model, state


def _generation(model, params, config):
  """The generation pass (text stream masked): eps of the UNet on fixed inputs."""
  rng = np.random.default_rng(1)
  m, d = config.model, config.diffdis
  x = rng.standard_normal((2, m.input_size, m.input_size, m.in_channels)).astype(np.float32)
  context = rng.standard_normal((2, d.context_length, d.context_dim)).astype(np.float32)
  t = np.array([30.0, 800.0], np.float32)
  return np.asarray(compile_fast(lambda p: model.apply({'params': p}, x, t, context),
                                 params)(params))


def test_finetune_starts_as_the_generator_and_leaves_its_folder_unchanged(generator, tmp_path):
  gen_dir, gen_config, gen_model, gen_state = generator
  before = _folder_digest(gen_dir)
  config = finetune_config(gen_dir)
  workdir = tmp_path / 'finetune'
  check_run(config, 'train', str(workdir), jax.device_count())
  trainer = build_trainer(config, str(workdir))
  state = jax.device_get(trainer.init_state())

  # the generator's sampling (EMA) UNet, from its newest checkpoint that reads back
  expected = jax.tree.map(np.asarray, gen_state.ema_params)
  for mine in (state.params, state.ema_params):
    unet, new = split_params(mine)
    jax.tree.map(np.testing.assert_array_equal, unet, expected)
    assert {'text_head', 'logit_scale'} <= set(new)
    assert any(k.startswith('text_stream') for k in new), sorted(new)
  # the step's first generation pass is the generator's, bit for bit
  reference = _generation(gen_model, expected, gen_config)
  np.testing.assert_array_equal(_generation(trainer.model, state.params, config), reference)
  np.testing.assert_array_equal(_generation(trainer.model, state.ema_params, config),
                                reference)
  # the same frozen text encoder: the empty prompt's c is the generator's
  np.testing.assert_array_equal(state.aux['null_context'], gen_state.aux['null_context'])
  assert int(state.step) == 0

  assert _folder_digest(gen_dir) == before  # nothing written, moved or cleaned up there
  assert not os.path.exists(gen_dir / 'checkpoints_corrupt')


@pytest.mark.parametrize('overrides, words', [
    ({'model.block_out_channels': (16, 48)},
     'model.block_out_channels=(16, 32) there, (16, 48) here'),
    ({'diffdis.context_dim': 32, 'text_encoder.hidden_size': 32}, 'diffdis.context_dim=16'),
    ({'text_encoder.seed': 1}, 'the text encoder in'),
    ({'text_encoder.caption_weight': 0.5}, 'the text encoder in'),
])
def test_a_generator_that_does_not_fit_is_refused_in_one_line(generator, tmp_path, overrides,
                                                               words):
  gen_dir, *_ = generator
  config = finetune_config(gen_dir, **overrides)
  with pytest.raises(ConfigError) as err:
    check_run(config, 'train', str(tmp_path / 'w'), jax.device_count())
  message = str(err.value)
  assert words in message and '\n' not in message, message
  assert not os.path.exists(tmp_path / 'w')


def test_a_generator_is_not_its_own_finetune(generator):
  gen_dir, *_ = generator
  config = finetune_config(gen_dir)
  with pytest.raises(ConfigError, match="own --workdir"):
    check_run(config, 'train', str(gen_dir), jax.device_count())
