"""Fashion-MNIST (Zalando Research, MIT licence) from its four IDX files: 60,000 training and
10,000 test images, 28x28 grayscale, 10 classes.

The files are read from a folder (`data.dir`; on Debian `apt-get install dataset-fashion-mnist`
puts them in DEBIAN_DIR). Nothing is downloaded. Every problem with the folder or a file (a
file missing, truncated, corrupt, of another IDX type, images and labels of different
counts) raises `FashionMNISTError`, a ConfigError whose one line says what to do.

    load_split(data_dir, 'train')  # {'image': (60000, 28, 28) uint8, 'label': (60000,) int32}
    to_model_input(images, 32)     # (n, 32, 32, 1) float32 in [-1, 1], padded with background

Models see the images padded to 32x32 (black, i.e. -1): a side that halves down to 8x8
latents, with the 28x28 pixels untouched (resizing would blur them).
"""
from __future__ import annotations

import functools
import gzip
import os
import zlib

import numpy as np

from diffdis_jax.core.checks import ConfigError

DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
SPLITS = {'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz'),
          'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz')}
SIZES = {'train': 60_000, 'test': 10_000}
SIDE = 28
MODEL_SIDE = 32
NUM_CLASSES = 10
CLASS_NAMES = ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt',
               'Sneaker', 'Bag', 'Ankle boot')
# IDX magic numbers: unsigned bytes, with 3 dimensions (images) or 1 (labels)
IMAGES_MAGIC, LABELS_MAGIC = 0x0803, 0x0801


class FashionMNISTError(ConfigError):
  """The Fashion-MNIST folder or one of its files cannot be read; the message says why."""


def install_hint(data_dir: str) -> str:
  if os.path.abspath(data_dir) == DEBIAN_DIR:
    sudo = '' if os.geteuid() == 0 else 'sudo '
    return f'install them with `{sudo}apt-get install dataset-fashion-mnist`'
  return ('put the four files from github.com/zalandoresearch/fashion-mnist there, or pass '
          f'--config.data.dir=DIR holding them (Debian: apt-get install '
          f'dataset-fashion-mnist puts them in {DEBIAN_DIR})')


def check_dir(data_dir: str):
  """Every file of both splits is in `data_dir` and reads as what it should be."""
  missing = [name for names in SPLITS.values() for name in names
             if not os.path.isfile(os.path.join(data_dir, name))]
  if missing:
    raise FashionMNISTError(f'Fashion-MNIST not found in {data_dir!r} (missing '
                            f'{", ".join(missing)}); {install_hint(data_dir)}')
  for split in SPLITS:
    load_split(data_dir, split)


def read_idx(path: str, magic: int) -> np.ndarray:
  """The uint8 array of a gzipped IDX file whose magic number is `magic`."""
  try:
    with gzip.open(path, 'rb') as f:
      raw = f.read()
  except FileNotFoundError:
    raise FashionMNISTError(f'{path} not found; {install_hint(os.path.dirname(path))}') from None
  except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError
    raise FashionMNISTError(f'{path} is truncated or corrupt ({type(err).__name__}: {err}); '
                            'replace it with an intact copy') from None
  if len(raw) < 4 or int.from_bytes(raw[:4], 'big') != magic:
    found = f'{int.from_bytes(raw[:4], "big"):#06x}' if len(raw) >= 4 else 'none'
    raise FashionMNISTError(f'{path} is not an IDX file of the expected type (magic number '
                            f'{found} instead of {magic:#06x}); check the file names')
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], 'big') for i in range(ndim))
  if len(raw) != header + int(np.prod(shape)):
    raise FashionMNISTError(f'{path} holds {len(raw) - header} bytes of data where its header '
                            f'says {shape} needs {int(np.prod(shape))}: the file is truncated '
                            'or corrupt; replace it with an intact copy')
  return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


@functools.lru_cache(maxsize=4)
def _load(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  image_file, label_file = (os.path.join(data_dir, name) for name in SPLITS[split])
  images, labels = read_idx(image_file, IMAGES_MAGIC), read_idx(label_file, LABELS_MAGIC)
  if images.shape[1:] != (SIDE, SIDE):
    raise FashionMNISTError(f'{image_file} holds {images.shape[1:]} images, not '
                            f'{SIDE}x{SIDE}: it is not Fashion-MNIST')
  if len(images) != len(labels):
    raise FashionMNISTError(f'{image_file} holds {len(images)} images but {label_file} '
                            f'{len(labels)} labels; replace the pair with intact copies')
  if labels.size and labels.max() >= NUM_CLASSES:
    raise FashionMNISTError(f'{label_file} holds label {labels.max()}; Fashion-MNIST has '
                            f'{NUM_CLASSES} classes: it is not Fashion-MNIST')
  return images, labels.astype(np.int32)


def load_split(data_dir: str, split: str) -> dict[str, np.ndarray]:
  """{'image': (n, 28, 28) uint8, 'label': (n,) int32} of 'train' or 'test' (read once)."""
  if split not in SPLITS:
    raise FashionMNISTError(f'Fashion-MNIST has no split {split!r}; use one of {list(SPLITS)}')
  images, labels = _load(os.path.abspath(data_dir), split)
  return {'image': images, 'label': labels}


def pad_to(images: np.ndarray, side: int = MODEL_SIDE) -> np.ndarray:
  """(n, 28, 28) uint8 -> (n, side, side, 1) uint8, centred on black (the background)."""
  lo = (side - SIDE) // 2
  out = np.zeros((len(images), side, side, 1), np.uint8)
  out[:, lo:lo + SIDE, lo:lo + SIDE, 0] = images
  return out


def to_model_input(images: np.ndarray, side: int = MODEL_SIDE) -> np.ndarray:
  """(n, 28, 28) uint8 -> (n, side, side, 1) float32 in [-1, 1], padded with background."""
  return pad_to(images, side).astype(np.float32) / 127.5 - 1.0


def crop_from(images: np.ndarray) -> np.ndarray:
  """The central 28x28 of (n, s, s, c) model-side images: the inverse of the padding."""
  lo = (images.shape[1] - SIDE) // 2
  return images[:, lo:lo + SIDE, lo:lo + SIDE]
