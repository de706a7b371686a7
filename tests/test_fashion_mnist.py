"""The Fashion-MNIST reader: small IDX files written here, the real files (installed by
`.ci/run` through `make`), and every way a folder or file can be wrong."""
import gzip
import os
import shutil

import numpy as np
import pytest

from diffdis_jax.core.checks import ConfigError
from diffdis_jax.data import fashion_mnist as fm


def write_idx(path, array: np.ndarray, magic: int, compress=True):
  header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  raw = header + array.astype(np.uint8).tobytes()
  with (gzip.open(path, 'wb') if compress else open(path, 'wb')) as f:
    f.write(raw)


def write_set(folder, n_train=12, n_test=5, seed=0):
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  arrays = {}
  for split, n in (('train', n_train), ('test', n_test)):
    images = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    image_file, label_file = fm.SPLITS[split]
    write_idx(os.path.join(folder, image_file), images, fm.IMAGES_MAGIC)
    write_idx(os.path.join(folder, label_file), labels, fm.LABELS_MAGIC)
    arrays[split] = (images, labels)
  return arrays


def test_reads_what_was_written_and_pads_with_background(tmp_path):
  arrays = write_set(tmp_path)
  fm.check_dir(str(tmp_path))
  for split, (images, labels) in arrays.items():
    data = fm.load_split(str(tmp_path), split)
    np.testing.assert_array_equal(data['image'], images)
    np.testing.assert_array_equal(data['label'], labels)
    assert data['label'].dtype == np.int32
  x = fm.to_model_input(arrays['train'][0])
  assert x.shape == (12, 32, 32, 1) and x.dtype == np.float32
  assert (x[:, :2] == -1).all() and (x[:, :, -2:] == -1).all()  # the padding is black
  np.testing.assert_allclose(fm.crop_from(x)[..., 0], arrays['train'][0] / 127.5 - 1.0,
                             atol=1e-6)


def test_real_files():
  fm.check_dir(fm.DEBIAN_DIR)
  train, test = fm.load_split(fm.DEBIAN_DIR, 'train'), fm.load_split(fm.DEBIAN_DIR, 'test')
  assert train['image'].shape == (60_000, 28, 28) and test['image'].shape == (10_000, 28, 28)
  # the classes are balanced: 6,000 and 1,000 of each
  assert np.bincount(train['label']).tolist() == [6000] * 10
  assert np.bincount(test['label']).tolist() == [1000] * 10
  assert train['label'][:3].tolist() == [9, 0, 0]  # ankle boot, T-shirt, T-shirt


@pytest.mark.parametrize('damage, message', [
    ('missing', 'Fashion-MNIST not found'),
    ('truncated_gzip', 'truncated or corrupt'),
    ('short_data', 'truncated or corrupt'),
    ('not_gzip', 'truncated or corrupt'),
    ('wrong_magic', 'magic number 0x0801 instead of 0x0803'),
    ('count_mismatch', 'labels; replace the pair'),
    ('bad_label', 'it is not Fashion-MNIST'),
])
def test_bad_folders_and_files_raise_one_line(tmp_path, damage, message):
  write_set(tmp_path)
  images = os.path.join(tmp_path, fm.SPLITS['train'][0])
  labels = os.path.join(tmp_path, fm.SPLITS['train'][1])
  if damage == 'missing':
    os.remove(labels)
  elif damage == 'truncated_gzip':
    with open(images, 'rb') as f:
      raw = f.read()
    with open(images, 'wb') as f:
      f.write(raw[:len(raw) // 2])
  elif damage == 'short_data':
    header = fm.IMAGES_MAGIC.to_bytes(4, 'big') + b''.join(
        d.to_bytes(4, 'big') for d in (12, 28, 28))
    with gzip.open(images, 'wb') as f:
      f.write(header + bytes(100))
  elif damage == 'not_gzip':
    write_idx(images, np.zeros((12, 28, 28)), fm.IMAGES_MAGIC, compress=False)
  elif damage == 'wrong_magic':
    shutil.copy(labels, images)
  elif damage == 'count_mismatch':
    write_idx(labels, np.zeros(11), fm.LABELS_MAGIC)
  elif damage == 'bad_label':
    write_idx(labels, np.full(12, 10), fm.LABELS_MAGIC)
  fm._load.cache_clear()
  with pytest.raises(ConfigError, match=message) as err:
    fm.check_dir(str(tmp_path))
  assert '\n' not in str(err.value)


def test_missing_debian_files_say_how_to_install(monkeypatch):
  monkeypatch.setattr(fm, 'DEBIAN_DIR', '/nonexistent/fashion-mnist')
  with pytest.raises(ConfigError, match='apt-get install dataset-fashion-mnist'):
    fm.check_dir('/nonexistent/fashion-mnist')
  with pytest.raises(ConfigError, match='--config.data.dir=DIR'):
    fm.check_dir('/elsewhere')
