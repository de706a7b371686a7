"""The zero-shot suite (eval/zeroshot_suite.py) on a tiny tfds dataset built on disk.

The model is mocked: `predict` returns an image's mean colour, `encode` a one-hot of the colour
word in the prompt, so a correct pipeline (reading, label order, cropping, prompt ensembling,
scoring) classifies every image right and a permuted class list gets every one wrong.
"""
import io
import json
import tarfile

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import demo_diffdis
from conftest import apply_overrides
from diffdis_jax.eval import zeroshot_suite as suite

COLOURS = ['red', 'green', 'blue']
SIZES = [(12, 20), (20, 12), (16, 16)]


class FakeColours(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Nine solid-colour images of three sizes; label = colour."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(None, None, 3)),
        'label': tfds.features.ClassLabel(names=COLOURS)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {'test': self._generate_examples()}

  def _generate_examples(self):
    for i in range(9):
      image = np.zeros((*SIZES[i // 3], 3), np.uint8)
      image[..., i % 3] = 200
      yield i, {'image': image, 'label': i % 3}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('tfds')
  builder = FakeColours(data_dir=str(root))
  builder.download_and_prepare(download_dir=str(root / 'downloads'))
  return str(root)


def spec(classes=COLOURS):
  return {'colours': {'tfds': 'fake_colours', 'split': 'test', 'classes': list(classes),
                      'templates': ['a photo of a {}.', 'a {} thing.']}}


def predict(params, images):
  assert images.shape[1:] == (8, 8, 3) and images.min() >= -1 and images.max() <= 1
  return images.mean(axis=(1, 2)) + params


def encode(texts):
  return np.array([[float(c in t.split(' ')[-1] or f' {c} ' in t) for c in COLOURS]
                   for t in texts]) + 1e-3


def test_read_split_crops_in_file_order(data_dir):
  images, labels = suite.read_split(spec()['colours'], data_dir, image_size=8)
  assert images.shape == (9, 8, 8, 3) and images.dtype == np.float32
  assert sorted(labels) == sorted(np.arange(9) % 3)  # tfds stores them in its own order
  # solid colour after resizing and cropping, in the channel of the label
  for image, label in zip(images, labels):
    want = np.full((8, 8, 3), -1.0, np.float32)
    want[..., label] = 200 / 127.5 - 1
    np.testing.assert_allclose(image, want, atol=1e-5)
  first, _ = suite.read_split(spec()['colours'], data_dir, image_size=8, max_images=4)
  np.testing.assert_array_equal(first, images[:4])


def test_center_crop_keeps_the_middle():
  image = np.zeros((10, 20), np.uint8)  # grayscale, twice as wide as high
  image[:, :5] = image[:, 15:] = 255
  out = suite.center_crop(image, 10)  # no resize needed: the shorter side is 10
  np.testing.assert_allclose(out, -1.0)
  assert out.shape == (10, 10, 3)
  assert suite.center_crop(image, 5).shape == (5, 5, 3)


def test_suite_scores_and_skips(data_dir):
  specs = dict(spec(), missing={'tfds': 'not_there', 'split': 'test', 'classes': ['a'],
                                'templates': ['{}']})
  results = suite.run_suite(predict, encode, 0.0, datasets=['colours', 'missing'],
                            data_dir=data_dir, image_size=8, batch_size=4, specs=specs)
  assert results['colours']['zeroshot_top1'] == 1.0 and results['colours']['num_images'] == 9
  assert 'not prepared' in results['missing']['skipped']
  # the class list is tied to the label ids: a permuted list scores 0
  wrong = suite.run_suite(predict, encode, 0.0, datasets=['colours'], data_dir=data_dir,
                          image_size=8, specs=spec(['green', 'blue', 'red']))
  assert wrong['colours']['zeroshot_top1'] == 0.0
  with pytest.raises(ValueError, match='2 classes'):
    suite.read_split(spec(['red', 'green'])['colours'], data_dir, 8)


def _colour_pairs(path):
  """webdataset shard of the three colours, each image stored once per caption (COCO-like)."""
  with tarfile.open(path, 'w') as tar:
    for i in range(6):
      image = np.zeros((12, 20, 3), np.uint8)
      image[..., i % 3] = 200
      png = io.BytesIO()
      Image.fromarray(image).save(png, 'PNG')
      text = (f'a {COLOURS[i % 3]} square' if i < 3 else f'the colour {COLOURS[i % 3]}').encode()
      for name, payload in ((f'{i:04d}.png', png.getvalue()), (f'{i:04d}.txt', text)):
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))


def test_evaluate_and_record_writes_zeroshot_and_retrieval(data_dir, tmp_path, monkeypatch):
  monkeypatch.setattr(suite, 'load_specs', spec)
  _colour_pairs(tmp_path / 'pairs.tar')
  config = apply_overrides(demo_diffdis.get_config(), {
      'eval.zeroshot_datasets': 'colours', 'eval.tfds_data_dir': data_dir,
      'eval.retrieval_shards': str(tmp_path / '*.tar'), 'diffdis.zeroshot.batch': 4})
  settings = {'steps': 3, 'checkpoint_step': 7}
  suite.evaluate_and_record(predict, encode, 0.0, eval_config=config.eval,
                            batch_size=config.diffdis.zeroshot.batch, image_size=8,
                            workdir=str(tmp_path / 'run'), settings=settings)
  with open(tmp_path / 'run' / 'eval.json') as f:
    saved = json.load(f)
  assert saved['zeroshot']['datasets']['colours']['zeroshot_top1'] == 1.0
  assert saved['zeroshot']['settings'] == settings
  ret = saved['retrieval']
  assert ret['num_images'] == 3 and ret['num_captions'] == 6  # one row per distinct image
  assert ret['metrics']['i2t_R@1'] == 1.0 and ret['metrics']['t2i_R@1'] == 1.0
  assert ret['settings'] == settings and ret['shards'] == [str(tmp_path / 'pairs.tar')]


def test_retrieval_recalls_of_captions():
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (5, 8, 8, 3)).astype(np.float32)
  colours = images.mean(axis=(1, 2))
  captions = [f'caption {j}' for j in range(10)]
  caption_image = np.arange(10) // 2  # two captions per image
  table = {c: colours[caption_image[j]] for j, c in enumerate(captions)}
  got = suite.retrieve(lambda p, x: x.mean(axis=(1, 2)), lambda t: np.stack([table[c] for c in t]),
                       None, images, captions, caption_image, batch_size=2)
  assert got['i2t_R@1'] == 1.0 and got['t2i_R@1'] == 1.0


def test_the_twelve_datasets():
  specs = suite.load_specs()
  counts = {name: len(s['classes']) for name, s in specs.items()}
  assert counts == {'cifar10': 10, 'cifar100': 100, 'caltech101': 102, 'stanford_cars': 196,
                    'flowers102': 102, 'food101': 101, 'sun397': 397, 'dtd': 47,
                    'fgvc_aircraft': 100, 'oxford_pets': 37, 'eurosat': 10, 'imagenet': 1000}
  for s in specs.values():
    assert len(set(s['classes'])) == len(s['classes'])
    assert s['templates'] and all('{}' in t for t in s['templates'])
    assert all('_' not in c for c in s['classes'])
  assert suite.parse_datasets('all', specs) == list(specs)
  assert suite.parse_datasets('dtd, cifar10', specs) == ['dtd', 'cifar10']
  with pytest.raises(ValueError, match='unknown zero-shot datasets'):
    suite.parse_datasets('cifar11', specs)
