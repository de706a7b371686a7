"""The digits classifier metric: accuracy, fd_digits ranking, class accuracy, caching."""
import os

import jax
import numpy as np
import pytest
import scipy.ndimage

from diffdis_jax.data.digits import load_digits
from diffdis_jax.eval import classifier_metric as cm
from diffdis_jax.eval import digits_metric as dm


@pytest.fixture(scope='module')
def cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp('digits_cache'))


@pytest.fixture(scope='module')
def metric(cache_dir):
  return dm.DigitsMetric.create(cache_dir=cache_dir, seed=0, size=16)


@pytest.fixture(scope='module')
def real():
  """297 real train digits (as many as the held-out reference) with their labels."""
  train = load_digits('train', 16)
  idx = np.random.default_rng(0).choice(len(train['label']), 297, replace=False)
  return train['image'][idx], train['label'][idx]


def _equal(a, b):
  return all(jax.tree.leaves(jax.tree.map(np.array_equal, a, b)))


def test_held_out_accuracy(metric):
  assert metric.test_accuracy > 0.9
  train = load_digits('train', 16)
  assert np.mean(metric.predict(train['image']) == train['label']) > 0.97


def test_fd_digits_ranks_real_digits_far_better(metric, real):
  images, _ = real
  rng = np.random.default_rng(1)
  fd = lambda x: metric.evaluate(x)['fd_digits']  # noqa: E731
  fd_real = fd(images)
  fd_noise = fd(rng.uniform(-1, 1, images.shape))
  fd_shuffled = fd(images.reshape(len(images), -1)[:, rng.permutation(16 * 16)]
                   .reshape(images.shape))
  fd_blur = [fd(scipy.ndimage.gaussian_filter(images, (0, s, s, 0))) for s in (1.0, 1.5, 2.0)]
  assert 0 < fd_real < fd_noise / 10 and fd_real < fd_shuffled / 10
  assert fd_real < fd_blur[0] < fd_blur[1] < fd_blur[2]
  assert fd_real < fd_blur[1] / 2


def test_sample_class_acc(metric, real):
  images, labels = real
  assert metric.evaluate(images, labels)['sample_class_acc'] > 0.95
  wrong = (labels + 1 + np.random.default_rng(2).integers(0, 9, len(labels))) % 10
  assert metric.evaluate(images, wrong)['sample_class_acc'] < 0.1
  with pytest.raises(ValueError, match='one label per image'):
    metric.evaluate(images, labels[:-1])


def test_cached_and_deterministic(metric, cache_dir, monkeypatch):
  path = os.path.join(cache_dir, f'digits_classifier_v{dm.VERSION}_size16_seed0.npz')
  assert os.path.exists(path)
  retrained = dm.train_classifier(seed=0, size=16)  # same seed, same weights, bit for bit
  assert _equal(retrained, metric.params)

  def no_training(*args, **kwargs):
    raise AssertionError('the cached classifier should have been loaded')

  monkeypatch.setattr(cm, 'train_classifier', no_training)
  loaded = dm.DigitsMetric.create(cache_dir=cache_dir, seed=0, size=16)
  assert _equal(loaded.params, metric.params)
  assert loaded.test_accuracy == metric.test_accuracy
  monkeypatch.undo()
  assert not _equal(dm.train_classifier(seed=1, size=16), metric.params)


def test_other_image_sizes():
  """Any `size` works: the classifier resizes to 16 x 16 (8 x 8 here: the original digits)."""
  small = dm.DigitsMetric.create(seed=0, size=8)
  assert small.test_accuracy > 0.9
  real = load_digits('train', 8)['image'][:297]
  assert small.evaluate(real)['fd_digits'] < small.evaluate(real[:, ::-1])['fd_digits'] / 3


def test_rejects_bad_input_and_foreign_cache(metric, tmp_path):
  with pytest.raises(ValueError, match=r'\(n, 16, 16, 1\)'):
    metric.features(np.zeros((3, 8, 8, 1)))
  assert metric.features(np.zeros((3, 16, 16))).shape == (3, dm.FEATURES)  # channel optional
  bad = tmp_path / f'digits_classifier_v{dm.VERSION}_size16_seed0.npz'
  np.savez(bad, something=np.zeros(3))
  with pytest.raises(ValueError, match=r'does not hold a v2 digits classifier \(size16\); delete'):
    dm.DigitsMetric.create(cache_dir=str(tmp_path), seed=0, size=16)


def test_cache_records_its_version_and_old_files_still_load(metric, cache_dir, tmp_path):
  """The cache file records data set and version; a file of another version is refused; a
  file from before the record (params only) still loads."""
  with np.load(os.path.join(cache_dir, f'digits_classifier_v{dm.VERSION}_size16_seed0.npz')) as f:
    cached = dict(f)
  assert str(cached.pop('__name__')) == 'digits' and int(cached.pop('__version__')) == dm.VERSION
  path = tmp_path / f'digits_classifier_v{dm.VERSION}_size16_seed0.npz'
  np.savez(path, **cached)  # as the code before the record wrote it
  assert _equal(dm.DigitsMetric.create(cache_dir=str(tmp_path), seed=0, size=16).params,
                metric.params)
  np.savez(path, **cached, __name__=np.array('digits'), __version__=np.array(dm.VERSION - 1))
  with pytest.raises(ValueError, match=f'holds a v{dm.VERSION - 1} digits classifier, not a '
                     f'v{dm.VERSION} digits classifier \\(size16\\).*delete it to retrain'):
    dm.DigitsMetric.create(cache_dir=str(tmp_path), seed=0, size=16)
