"""--mode=eval for DiffDis (DiffDisTask.evaluate): a checkpoint of the tiny demo config through
launch/main.py, on a suite dataset prepared as tfds (held-out digits under the name cifar10)
and on webdataset shards storing each image once per caption, as COCO does.

The checkpoint is an initialised state (no train step is compiled), so the scores are checked
for range and bookkeeping, not for quality; the quality of the same predictor after training is
test_diffdis_train.py's. That `predict` feeds the model what training fed it is checked against
the query predictor on the digits themselves.
"""
import concurrent.futures
import io
import json
import os
import subprocess
import sys
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from conftest import ROOT
from configs import demo_diffdis
from diffdis_jax.core.checks import ConfigError
from diffdis_jax.data import digits_captions as cd
from diffdis_jax.eval import zeroshot_suite as suite
from diffdis_jax.eval.diffdis_sampler import make_query_predictor
from diffdis_jax.modes.checks import check_run
from diffdis_jax.modes.run import build_trainer
from diffdis_jax.tasks import make_task
from diffdis_jax.train import checkpoint as ckpt_lib
from test_diffdis_train import tiny_demo_config
import test_stable_diffusion_folder as sd_test

sd_folder = sd_test.sd_folder  # the tiny diffusers SD folder fixture, for this module too
NUM_TEST, PAIRED_IMAGES = 20, 6
BATCH = 8   # diffdis.zeroshot.batch: 20 images make two full batches and a padded one


def _grey_uint8(images):
  return np.round((images[..., 0] + 1.0) * 127.5).astype(np.uint8)


class Cifar10(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Held-out digits as RGB under the suite's name cifar10 (its ten class names, digit labels:
  the names do not matter to the bookkeeping checked here)."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3)),
        'label': tfds.features.ClassLabel(names=suite.load_specs()['cifar10']['classes'])}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'test': self._generate_examples()}

  def _generate_examples(self):
    data = cd.load_captioned_digits('test', 8)
    for i, (image, label) in enumerate(zip(_grey_uint8(data['image'][:NUM_TEST]),
                                           data['label'][:NUM_TEST])):
      yield i, {'image': np.repeat(image[..., None], 3, axis=-1), 'label': int(label)}


def _write_pairs(path):
  """PAIRED_IMAGES digits, each stored twice (two caption templates), plus one pair with an
  empty caption (skipped)."""
  data = cd.load_captioned_digits('test', 8)
  with tarfile.open(path, 'w') as tar:
    def add(name, payload):
      info = tarfile.TarInfo(name)
      info.size = len(payload)
      tar.addfile(info, io.BytesIO(payload))
    key = 0
    for i, image in enumerate(_grey_uint8(data['image'][:PAIRED_IMAGES + 1])):
      png = io.BytesIO()
      Image.fromarray(image, mode='L').save(png, 'PNG')
      texts = [cd.caption(int(data['label'][i]), t) for t in (0, 1)]
      for text in texts if i < PAIRED_IMAGES else ['  ']:
        add(f'{key:06d}.png', png.getvalue())
        add(f'{key:06d}.txt', text.encode())
        key += 1
  return str(path)


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  """(config, workdir with a step-0 checkpoint, tfds data_dir, shard glob, trainer, state)."""
  root = tmp_path_factory.mktemp('dd_eval')
  Cifar10(data_dir=str(root / 'tfds')).download_and_prepare(
      download_dir=str(root / 'downloads'))
  os.makedirs(root / 'pairs')
  _write_pairs(root / 'pairs' / 'test-00000.tar')
  workdir = root / 'run'
  # the text encoder's pre-stage compiles the same whatever its length; its quality is not
  # what is tested here
  config = tiny_demo_config(**{'diffdis.zeroshot.batch': BATCH,
                               'text_encoder.pretrain_steps': 20})
  trainer = build_trainer(config, str(workdir))
  state = trainer.init_state()
  checkpointer = ckpt_lib.Checkpointer(str(workdir))
  checkpointer.save(0, state, trainer.data_iterator(), force=True)
  checkpointer.close()
  return config, workdir, str(root / 'tfds'), str(root / 'pairs' / '*.tar'), trainer, state


def _flat(config, prefix=''):
  out = {}
  for k, v in config.items():
    out.update(_flat(v, f'{prefix}{k}.') if hasattr(v, 'items') else {f'{prefix}{k}': v})
  return out


def _config_file(path, config):
  """A config file rebuilding `config` as configs/demo_diffdis.py plus the fields that differ."""
  base = _flat(demo_diffdis.get_config())
  diff = {k: v for k, v in _flat(config).items() if base[k] != v}
  path.write_text('from configs import demo_diffdis\n\n'
                  f'OVERRIDES = {diff!r}\n\n\n'
                  'def get_config():\n  c = demo_diffdis.get_config()\n'
                  '  c.update_from_flattened_dict(OVERRIDES)\n  return c\n')
  return str(path)


def _main(args):
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
             JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, 'launch/main.py', '--mode=eval', *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=600)


def test_predict_feeds_the_model_what_training_fed_it(inputs):
  """RGB-replicated digits through `predict` (luma, padding, the fixed key) give the query
  predictor's estimates on the grey digits themselves."""
  config, _, _, _, trainer, state = inputs
  fns = trainer.task.zeroshot_functions()
  assert fns.image_size == 8 and fns.settings['steps'] == config.diffdis.zeroshot.steps
  grey = _grey_uint8(cd.load_captioned_digits('test', 8)['image'][:NUM_TEST])
  rgb = np.repeat(grey[..., None], 3, axis=-1) / 127.5 - 1.0
  grey = (grey[..., None] / 127.5 - 1.0).astype(np.float32)  # the model's one channel
  got = fns.predict(state.ema_params, rgb)
  assert got.shape == (NUM_TEST, config.diffdis.text_dim)

  query = jax.jit(make_query_predictor(trainer.model, config))
  null_context = jnp.asarray(trainer.task.text.encode([''])[0][0])
  key = jax.random.PRNGKey(config.seed + 3)
  want = []
  for start in range(0, NUM_TEST, BATCH):
    chunk = grey[start:start + BATCH]
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], BATCH - len(chunk), axis=0)])
    want.append(np.asarray(query(state.ema_params, padded, null_context, key))[:len(chunk)])
  np.testing.assert_allclose(got, np.concatenate(want), atol=2e-5)
  np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_eval_mode_writes_zeroshot_and_retrieval(inputs, tmp_path):
  config, workdir, data_dir, shards, _, _ = inputs
  r = _main([f'--config={_config_file(tmp_path / "tiny_dd.py", config)}',
             f'--workdir={workdir}', '--config.eval.zeroshot_datasets=cifar10,dtd',
             f'--config.eval.tfds_data_dir={data_dir}',
             f'--config.eval.retrieval_shards={shards}'])
  assert r.returncode == 0, r.stderr[-3000:]
  with open(workdir / 'eval.json') as f:
    saved = json.load(f)

  zs = saved['zeroshot']
  cifar = zs['datasets']['cifar10']
  assert cifar['num_images'] == NUM_TEST and cifar['templates'] == 4
  assert 0 <= cifar['zeroshot_top1'] <= cifar['zeroshot_top5'] <= 1
  assert 'not prepared' in zs['datasets']['dtd']['skipped']  # named, absent: recorded
  settings = zs['settings']
  assert settings['checkpoint_step'] == 0 and settings['steps'] == config.diffdis.zeroshot.steps
  assert settings['guidance'] == config.diffdis.zeroshot.guidance and settings['seeds'] == 1
  assert settings['image_size'] == 8 and settings['input'] == 'pixels'

  ret = saved['retrieval']
  # two captions per stored image: one row per distinct image
  assert ret['num_images'] == PAIRED_IMAGES and ret['num_captions'] == 2 * PAIRED_IMAGES
  assert ret['skipped_records'] == {'empty_caption': 1}
  assert set(ret['metrics']) == {f'{d}_R@{k}' for d in ('i2t', 't2i') for k in (1, 5, 10)}
  assert all(0 <= v <= 1 for v in ret['metrics'].values())
  assert ret['metrics']['t2i_R@10'] == 1.0  # only 6 images to rank: each is in the top 10
  assert ret['settings']['checkpoint_step'] == 0


def _random_params(task, seed=0):
  """Parameters of the task's model in their shapes, kernels ~ N(0, 1/fan_in), without
  compiling the model's init."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  model = task.build_model()
  shapes = nn.unbox(jax.eval_shape(lambda r: task.init_params(model, r), jax.random.PRNGKey(0)))
  rng = np.random.default_rng(seed)

  def value(leaf):
    if len(leaf.shape) >= 2:
      return rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    return 0.1 * rng.standard_normal(leaf.shape)
  return jax.tree.map(lambda leaf: value(leaf).astype(np.float32), shapes)


def test_latent_models_see_the_vae_latents(sd_folder):
  """A latent model's `predict` takes images at the VAE's input size and gives the query
  predictor's estimates on the VAE's posterior mean times its scaling factor."""
  folder, _ = sd_folder
  config = sd_test.tiny_diffdis_config(folder, input_size=4)
  d = config.diffdis
  d.query, d.zeroshot.steps, d.zeroshot.batch = 'mean', 2, 4
  task = make_task(config)
  params = _random_params(task)
  fns = task.zeroshot_functions()
  assert fns.image_size == 8 and fns.settings['input'] == 'vae_latent_mean'  # 2 VAE levels
  images = np.random.default_rng(1).uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
  got = fns.predict(params, images)

  sd = task.stable_diffusion
  z = sd.vae.apply({'params': sd.vae_params}, images, method='encode')[0] * sd.vae.scaling_factor
  z = np.concatenate([z, z[-1:]])  # padded to the batch of 4, as predict does
  null_context = jnp.asarray(task.text.encode([''])[0][0])
  query = jax.jit(make_query_predictor(task.model, config))
  want = query(params, z, null_context, jax.random.PRNGKey(config.seed + 3))[:3]
  assert got.shape == (3, config.diffdis.text_dim)
  np.testing.assert_allclose(got, np.asarray(want), atol=2e-5)


@pytest.mark.parametrize('overrides,message', [
    # nothing named: the captioned digits evaluate their own test split, which needs a head
    ({'diffdis.align_mode': 'none'}, 'no text head'),
    ({'eval.zeroshot_datasets': 'cifar11'}, 'unknown zero-shot datasets'),
    ({'eval.zeroshot_datasets': 'cifar10'}, 'eval.tfds_data_dir=\'\' is not a directory'),
    ({'eval.zeroshot_datasets': 'dtd', 'eval.tfds_data_dir': '{data_dir}'},
     'none of [\'dtd\'] is prepared'),
    ({'eval.retrieval_shards': '/nowhere/*.tar'}, 'matches no file'),
    ({'eval.retrieval_shards': '{shards}', 'eval.retrieval_max_pairs': -1},
     'eval.retrieval_max_pairs must be'),
    ({'eval.retrieval_shards': '{shards}', 'diffdis.align_mode': 'none'}, 'no text head'),
])
def test_bad_eval_inputs_are_named(inputs, overrides, message):
  config, workdir, data_dir, shards, _, _ = inputs
  overrides = {k: v.format(data_dir=data_dir, shards=shards) if isinstance(v, str) else v
               for k, v in overrides.items()}
  with pytest.raises(ConfigError) as err:
    check_run(tiny_demo_config(**overrides), 'eval', str(workdir))
  assert message in str(err.value), str(err.value)
  assert '\n' not in str(err.value)


def test_cli_bad_input_is_one_line_and_writes_nothing(inputs, tmp_path):
  """Refused before anything compiles: no checkpoint in an empty workdir, no text head."""
  _, _, _, shards, _, _ = inputs
  cases = [([f'--config.eval.retrieval_shards={shards}'], 'no checkpoint under'),
           (['--config.diffdis.align_mode=none'], 'no text head')]
  workdirs = [tmp_path / f'w{i}' for i in range(len(cases))]
  for w in workdirs:
    w.mkdir()
    (w / 'keep.txt').write_text('precious')
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(
        lambda cw: _main(['--config=configs/demo_diffdis.py', f'--workdir={cw[1]}', *cw[0][0]]),
        zip(cases, workdirs)))
  for (_, words), w, r in zip(cases, workdirs, results):
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr[-2000:]
    assert lines[0].startswith('error:') and words in lines[0], lines[0]
    assert sorted(os.listdir(w)) == ['keep.txt']
