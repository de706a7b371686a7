"""DiffDis on image-text pair shards: a tiny SD folder's VAE and CLIP turn each sharded batch
into latents, c and e (equal to the same encoders run on the host), the Trainer trains on them
and its checkpoint resumes the input at the next pair; bad pair configs stop with one line."""
import json

import jax
import numpy as np
import pytest

from conftest import FAST_COMPILE, apply_overrides, compile_fast
from diffdis_jax.core.checks import ConfigError
from diffdis_jax.modes.checks import check_run
from diffdis_jax.data import digits_captions as cd
from diffdis_jax.objectives.diffdis import text_query
from diffdis_jax.train import checkpoint as ckpt_lib
from diffdis_jax.modes.run import build_trainer
from diffdis_jax.tasks import make_task
from test_stable_diffusion_folder import sd_folder, tiny_diffdis_config  # noqa: F401 (a fixture)

BATCH = 16


@pytest.fixture(scope='module')
def pair_shards(tmp_path_factory):
  """The captioned training digits at 16 px (the tiny VAE halves them to 8x8 latents)."""
  folder = tmp_path_factory.mktemp('pairs')
  cd.write_caption_shards(str(folder), 'train', size=16, per_shard=400)
  return str(folder)


def tiny_pairs_config(sd, data_dir, **overrides):
  """configs/diffdis_sd15.py shrunk to the tiny SD folder of test_stable_diffusion_folder."""
  config = tiny_diffdis_config(sd)
  config.data.dir = data_dir
  d = config.diffdis
  config.batch_size, config.total_steps = BATCH, 4
  config.mesh.data, config.mesh.fsdp = 2, 4
  config.log_every, config.checkpoint_every, config.sample_every = 1, 2, 10_000
  d.sample.steps, d.sample.per_prompt, d.sample.prompts = 2, 2, ('a cat', 'a dog')
  return apply_overrides(config, overrides)


def test_frozen_encoders_make_the_step_batch_and_training_resumes(tmp_path, sd_folder,
                                                                    pair_shards):
  folder, _ = sd_folder
  config = tiny_pairs_config(folder, pair_shards)
  check_run(config, 'train', str(tmp_path / 'run'), jax.device_count())
  trainer = build_trainer(config, str(tmp_path / 'run'))
  trainer.compiler_options = FAST_COMPILE
  task, sd = trainer.task, trainer.task.stable_diffusion
  assert task.pixel_size == 16

  host = next(trainer.data_iterator())
  assert set(host) == {'image', 'input_ids', 'attention_mask'}
  assert host['image'].shape == (BATCH, 16, 16, 3) and host['input_ids'].shape == (BATCH, 16)
  batch = task.prepare_batch(trainer.shard(host), step=1)
  abstract = trainer.abstract_batch()
  assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
      k: (v.shape, v.dtype) for k, v in abstract.items()}
  assert batch['image'].sharding == trainer.batch_sharding  # split like the step's batch
  # the same encoders on the host, unsharded: the latent draw of step 1, c and e
  # (each compiled whole: run op by op, the encoders would compile a few hundred small ops)
  rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
  def encode(*args):
    return sd.vae.apply({'params': sd.vae_params}, *args, method='encode_latents')

  def text(ids):
    return sd.text_encoder.apply({'params': sd.text_encoder_params}, ids)

  latents = compile_fast(encode, host['image'], rng)(host['image'], rng)
  out = compile_fast(text, host['input_ids'])(host['input_ids'])
  np.testing.assert_allclose(batch['image'], latents, atol=2e-5)
  np.testing.assert_allclose(batch['context'], out['last_hidden_state'], atol=2e-5)
  np.testing.assert_allclose(batch['query'], text_query(out, 'eot'), atol=2e-5)
  mean = compile_fast(encode, host['image'])(host['image'])
  assert np.abs(np.asarray(batch['image']) - mean).max() > 1e-3  # a draw, not the mean
  step2 = task.prepare_batch(trainer.shard(host), step=2)
  assert not np.allclose(step2['image'], batch['image'])  # a new draw each step

  state = jax.device_get(trainer.train(stop_at=2))
  assert int(state.step) == 2
  with open(tmp_path / 'run' / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  assert [r['skipped_records'] for r in records if 'loss' in r] == [0, 0]
  assert all(np.isfinite(r['loss']) for r in records if 'loss' in r)

  # the checkpoint holds the pair position: a new iterator restored from it continues with
  # the third batch of a fresh one
  fresh = trainer.data_iterator()
  third = [next(fresh) for _ in range(3)][-1]
  resumed = build_trainer(config, str(tmp_path / 'run'))
  data_it = resumed.data_iterator()
  checkpointer = ckpt_lib.Checkpointer(str(tmp_path / 'run'))
  target = ckpt_lib.abstract_with_shardings(resumed.abstract_state, resumed.state_shardings)
  assert int(checkpointer.restore_latest(target, data_it).step) == 2
  checkpointer.close()
  np.testing.assert_array_equal(next(data_it)['input_ids'], third['input_ids'])
  np.testing.assert_array_equal(next(data_it)['image'], next(fresh)['image'])

  # the text-to-image preview decodes its latents through SD's VAE: one row per prompt
  grid = task.preview(task.make_preview_fn(trainer.model), state.ema_params)
  assert grid.shape == (2 * 17 + 1, 2 * 17 + 1, 3) and grid.dtype == np.uint8
  assert grid[1:17, 1:17].std() > 0


@pytest.mark.parametrize('overrides, message', [
    ({'data.dir': ''}, 'data.dir is empty'),
    ({'data.dir': '/nonexistent/*.tar'}, 'holds no caption shards'),
    ({'diffdis.query': 'projected_eot'}, 'needs the text projection'),
    ({'diffdis.text_dim': 16}, 'pass --config.diffdis.text_dim=32'),
    ({'diffdis.context_dim': 16}, 'diffdis.context_dim'),
    ({'diffdis.context_length': 77}, 'exceeds the text encoder'),
    ({'model.in_channels': 3}, 'in_channels'),
    ({'init.text_encoder': '/nonexistent'}, 'init.text_encoder'),
])
def test_bad_pair_configs_stop_with_one_line(sd_folder, pair_shards, overrides, message,
                                            tmp_path):
  folder, _ = sd_folder
  config = tiny_pairs_config(folder, pair_shards, **overrides)
  with pytest.raises(ConfigError, match=message) as error:
    check_run(config, 'train', str(tmp_path))
  assert '\n' not in str(error.value)


def test_a_separate_text_encoder_folder_is_what_encodes(sd_folder, pair_shards, tmp_path):
  """init.text_encoder names a transformers text-encoder folder; here the SD folder's own, so
  c and e must equal those of the default path through the SD folder."""
  folder, _ = sd_folder
  separate = tiny_pairs_config(folder, pair_shards,
                               **{'init.text_encoder': f'{folder}/text_encoder'})
  check_run(separate, 'train', str(tmp_path))
  texts = ['a cat', '']
  want = make_task(tiny_pairs_config(folder, pair_shards)).text.encode(texts)
  got = make_task(separate).text.encode(texts)
  for ours, theirs in zip(got, want):
    np.testing.assert_array_equal(ours, theirs)
