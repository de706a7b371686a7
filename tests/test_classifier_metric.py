"""The Fashion-MNIST classifier metric (eval/fashion_mnist_metric.py on eval/classifier_metric.py):
accuracy, fd_fmnist ranking, class accuracy, accepted inputs, caching and refused caches.

One classifier is trained per module run (about a minute on a 2-core CPU) and cached in a
temporary folder that the caching tests load from.
"""
import os
import re

import jax
import numpy as np
import pytest
import scipy.ndimage

from diffdis_jax.data import fashion_mnist
from diffdis_jax.eval import classifier_metric as cm
from diffdis_jax.eval import fashion_mnist_metric as fm
from diffdis_jax.eval.fid import to_uint8

CACHE_NAME = f'fmnist_classifier_v{fm.VERSION}_seed0.npz'
N = 2000  # images per scored set


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('fmnist_cache'))


@pytest.fixture(scope='module')
def metric(cache_dir):
  return fm.FashionMNISTMetric.create(cache_dir=cache_dir, seed=0)


def _sample(split, n=N, seed=0):
  """n real images of `split`, (n, 28, 28, 1) float in [-1, 1], with their labels."""
  data = fashion_mnist.load_split(fashion_mnist.DEBIAN_DIR, split)
  idx = np.random.default_rng(seed).choice(len(data['label']), n, replace=False)
  return fashion_mnist.to_model_input(data['image'][idx], 28), data['label'][idx]


def _equal(a, b):
  return all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


def test_test_accuracy(metric):
  assert metric.test_accuracy > 0.895
  images, labels = _sample('train')
  assert np.mean(metric.predict(images) == labels) > metric.test_accuracy
  assert metric.features(images[:5]).shape == (5, fm.FEATURES)


def test_fd_fmnist_ranks_real_images_far_better(metric):
  images, labels = _sample('train')
  held_out, _ = _sample('test', seed=1)
  rng = np.random.default_rng(2)
  fd = lambda x: metric.evaluate(x)['fd_fmnist']  # noqa: E731
  fd_real, fd_held_out = fd(images), fd(held_out)
  fd_noise = fd(rng.uniform(-1, 1, images.shape))
  fd_shuffled = fd(images.reshape(N, -1)[:, rng.permutation(28 * 28)].reshape(images.shape))
  fd_blur = [fd(scipy.ndimage.gaussian_filter(images, (0, s, s, 0))) for s in (0.7, 1.0, 1.5)]
  fd_three_classes = fd(images[labels < 3])  # mode dropping: real images of 3 classes only
  assert 0 < fd_held_out < 5 and 0 < fd_real < 5
  assert fd_real < fd_noise / 20 and fd_real < fd_shuffled / 20
  assert fd_real < fd_blur[0] < fd_blur[1] < fd_blur[2] and fd_real < fd_blur[1] / 3
  assert fd_real < fd_three_classes / 10


def test_sample_class_acc(metric):
  images, labels = _sample('test', seed=3)
  assert metric.evaluate(images, labels)['sample_class_acc'] == pytest.approx(
      metric.test_accuracy, abs=0.02)
  shuffled = np.random.default_rng(4).permutation(labels)
  assert metric.evaluate(images, shuffled)['sample_class_acc'] < 0.2
  with pytest.raises(ValueError, match='one label per image'):
    metric.evaluate(images, labels[:-1])


def test_model_side_and_uint8_inputs_score_the_same(metric):
  """Padded 32 x 32 model-side images (cropped back) and ADM-format uint8 arrays, gray or RGB,
  28 or 32 wide, give the scores of the 28 x 28 floats."""
  data = fashion_mnist.load_split(fashion_mnist.DEBIAN_DIR, 'test')
  raw, labels = data['image'][:500], data['label'][:500]
  want = metric.evaluate(fashion_mnist.to_model_input(raw, 28), labels)
  padded = fashion_mnist.to_model_input(raw, 32)
  assert padded.shape == (500, 32, 32, 1)
  assert metric.evaluate(padded, labels) == want
  rgb = np.repeat(to_uint8(padded), 3, axis=3)  # as a samples.npz arr_0 stores them
  assert metric.evaluate(fm.from_uint8(rgb), labels) == want
  assert metric.evaluate(fm.from_uint8(raw), labels) == want
  with pytest.raises(ValueError, match=r'\(n, 28, 28, 1\) or model-side \(n, 32, 32, 1\)'):
    metric.evaluate(np.zeros((4, 30, 30, 1)))
  with pytest.raises(ValueError, match='from_uint8'):
    metric.evaluate(np.zeros((4, 32, 32, 3)))
  with pytest.raises(ValueError, match=r'takes float images in \[-1, 1\], got uint8'):
    metric.evaluate(fm.from_uint8(raw).astype(np.uint8))  # not silently clipped to 0 and 1
  with pytest.raises(ValueError, match='takes uint8 images, got float32'):
    fm.from_uint8(padded)


def test_cache_is_reused(metric, cache_dir, monkeypatch):
  assert os.listdir(cache_dir) == [CACHE_NAME]

  def no_training(*args, **kwargs):
    raise AssertionError('the cached classifier should have been loaded')

  monkeypatch.setattr(cm, 'train_classifier', no_training)
  loaded = fm.FashionMNISTMetric.create(cache_dir=cache_dir, seed=0)
  assert _equal(loaded.params, metric.params)
  assert loaded.test_accuracy == metric.test_accuracy
  with pytest.raises(AssertionError, match='should have been loaded'):
    fm.FashionMNISTMetric.create(cache_dir=cache_dir, seed=1)  # another seed: not cached


def test_refuses_caches_of_another_version_or_data_set(cache_dir, tmp_path, monkeypatch):
  with np.load(os.path.join(cache_dir, CACHE_NAME)) as f:
    cached = dict(f)
  assert str(cached['__name__']) == 'fmnist' and int(cached['__version__']) == fm.VERSION
  monkeypatch.setattr(cm, 'train_classifier', lambda *a, **k: pytest.fail('trained'))
  path = tmp_path / CACHE_NAME
  create = lambda: fm.FashionMNISTMetric.create(cache_dir=str(tmp_path), seed=0)  # noqa: E731
  for name, version in (('fmnist', fm.VERSION + 1), ('digits', fm.VERSION)):
    np.savez(path, **{**cached, '__name__': np.array(name), '__version__': np.array(version)})
    with pytest.raises(ValueError, match=f'{re.escape(str(path))} holds a v{version} {name} '
                       f'classifier, not a v{fm.VERSION} fmnist classifier .*; delete it'):
      create()
  np.savez(path, **{k: v for k, v in cached.items() if k != 'conv1/kernel'})
  with pytest.raises(ValueError, match='does not hold a v1 fmnist classifier; delete it'):
    create()
  path.write_bytes(b'not an npz')
  with pytest.raises(ValueError, match='cannot be read as a v1 fmnist classifier'):
    create()


def test_missing_data_says_where_and_how(tmp_path):
  with pytest.raises(fashion_mnist.FashionMNISTError, match='not found'):
    fm.FashionMNISTMetric.create(data_dir=str(tmp_path))
