"""Sample-quality metrics in the features of a small classifier trained by the project.

No Inception weights: a small CNN is trained on a data set's train split, seeded and
deterministic, and cached under `cache_dir` so it trains once. Two numbers come out of it:

  fd_<name>         Fréchet distance (eval/fid.py) between the classifier's penultimate features
                    of the given samples and of the real held-out images. It is *not* FID: the
                    feature network is this classifier, not Inception, and the value depends on
                    the number of samples (compare runs at the same count).
  sample_class_acc  the fraction of class-conditional samples that the classifier assigns to
                    the class they were generated for.

A `ClassifierSpec` says what differs between data sets: how to load a split, which images the
metric accepts, the network's widths and input side, and the training recipe. The data sets:
`digits_metric.DigitsMetric` (scikit-learn's digits) and `fashion_mnist_metric.
FashionMNISTMetric`. The cache file is named by the spec's name and version (bump the version
when the network or the recipe changes) and records both, so a file of another version is
refused rather than silently used.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable, Optional
import zipfile

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffdis_jax.core import files
from diffdis_jax.eval.fid import Statistics, frechet_distance

EVAL_CHUNK = 1000   # images per forward pass when computing features (bounds the memory)


@dataclasses.dataclass(frozen=True)
class ClassifierSpec:
  """One data set's classifier: data, network and training recipe."""
  name: str           # names the cache file: {name}_classifier_v{version}{tag}_seed{seed}.npz
  version: int        # bump when the network or the recipe changes
  fd_key: str         # the Fréchet distance's key in `evaluate`
  # split ('train' or 'test') -> (images (n, h, w, 1) float32 in [-1, 1], labels (n,) int)
  load: Callable[[str], tuple[np.ndarray, np.ndarray]]
  # float32 (n, h, w, 1) images given to the metric -> the network's input (n, h', w', 1);
  # raises ValueError for shapes the metric does not accept
  prepare: Callable[[np.ndarray], np.ndarray]
  side: int                   # the network resizes its input to side x side (bilinear)
  widths: tuple[int, ...]     # one 3x3 conv + silu + 2x2 average pool per width
  features: int               # width of the penultimate layer: the FD's feature space
  num_classes: int = 10
  epochs: int = 20
  batch: int = 100
  learning_rate: float = 2e-3  # AdamW's
  cosine: bool = False        # decay the learning rate to 0 over the training (else constant)
  weight_decay: float = 1e-4
  max_shift: int = 0          # shift augmentation: up to this many pixels (at `side`)
  tag: str = ''               # more of the cache file's name (the digits' '_size16')

  def network(self) -> 'Classifier':
    return Classifier(self.widths, self.features, self.num_classes, self.side)


def resize_to(images, side: int):
  """Bilinear resize of NHWC images to side x side (antialiased when shrinking); a no-op when
  they are that size already."""
  if images.shape[1:3] == (side, side):
    return images
  return jax.image.resize(images, (images.shape[0], side, side, images.shape[3]), 'bilinear')


class Classifier(nn.Module):
  """resize, (conv-silu-pool) per width, dense-silu, dense: `features` gives the penultimate
  (features,) activations."""
  widths: tuple[int, ...]
  num_features: int
  num_classes: int
  side: int

  def setup(self):
    for i, width in enumerate(self.widths):  # named conv1, conv2, ... (the cached params' keys)
      setattr(self, f'conv{i + 1}', nn.Conv(width, (3, 3), padding='SAME'))
    self.hidden = nn.Dense(self.num_features)
    self.out = nn.Dense(self.num_classes)

  def features(self, x):
    x = resize_to(x, self.side)
    for i in range(len(self.widths)):  # (max pooling: its gradient is slow on XLA:CPU)
      x = nn.avg_pool(nn.silu(getattr(self, f'conv{i + 1}')(x)), (2, 2), (2, 2))
    return nn.silu(self.hidden(x.reshape(x.shape[0], -1)))  # smooth: no dead feature dims

  def features_and_logits(self, x):
    feats = self.features(x)
    return feats, self.out(feats)

  def __call__(self, x):
    return self.out(self.features(x))


def _optimizer(learning_rate: float, weight_decay: float, decay_steps: int = 0):
  """AdamW, its learning rate constant or (decay_steps > 0) cosine-decayed to 0."""
  if decay_steps:
    learning_rate = optax.cosine_decay_schedule(learning_rate, decay_steps)
  return optax.adamw(learning_rate, weight_decay=weight_decay)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _train_step(model, optimizer_args, params, opt_state, images, labels):
  def loss_fn(p):
    logits = model.apply({'params': p}, images)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  updates, opt_state = _optimizer(*optimizer_args).update(
      jax.grad(loss_fn)(params), opt_state, params)
  return optax.apply_updates(params, updates), opt_state


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, params, images):
  return model.apply({'params': params}, images, method=Classifier.features_and_logits)


def random_shift(images: np.ndarray, rng: np.random.Generator, max_shift: int) -> np.ndarray:
  """Translates each image by up to `max_shift` pixels, filling with background (-1)."""
  n, h, w, _ = images.shape
  m = max_shift
  padded = np.pad(images, ((0, 0), (m, m), (m, m), (0, 0)), constant_values=-1.0)
  rows = rng.integers(0, 2 * m + 1, n)[:, None] + np.arange(h)[None, :]
  cols = rng.integers(0, 2 * m + 1, n)[:, None] + np.arange(w)[None, :]
  return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _init_shapes(spec: ClassifierSpec) -> dict:
  return jax.eval_shape(spec.network().init, jax.random.PRNGKey(0),
                        jnp.zeros((1, spec.side, spec.side, 1)))['params']


def train_classifier(spec: ClassifierSpec, seed: int = 0) -> dict:
  """Trains the classifier on the spec's train split; the same params for the same seed.

  A Python loop over one jitted step: XLA:CPU runs convolutions inside a compiled while loop
  (fori_loop/scan) tens of times slower than as top-level ops.
  """
  images, labels = spec.load('train')
  # Resized once here, so the shift augmentation moves whole pixels of the network's input.
  images = np.asarray(resize_to(images, spec.side))
  labels = np.asarray(labels)
  model = spec.network()
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, spec.side, spec.side, 1)))['params']
  num_batches = len(images) // spec.batch
  optimizer_args = (spec.learning_rate, spec.weight_decay,
                    spec.epochs * num_batches if spec.cosine else 0)
  opt_state = _optimizer(*optimizer_args).init(params)
  rng = np.random.default_rng(seed)
  for _ in range(spec.epochs):
    order = rng.permutation(len(images))[:num_batches * spec.batch]
    for idx in order.reshape(num_batches, spec.batch):
      batch = images[idx]
      if spec.max_shift:
        batch = random_shift(batch, rng, spec.max_shift)
      params, opt_state = _train_step(model, optimizer_args, params, opt_state, batch,
                                      labels[idx])
  return jax.device_get(params)


def cache_path(spec: ClassifierSpec, cache_dir: str, seed: int) -> str:
  return os.path.join(cache_dir, f'{spec.name}_classifier_v{spec.version}{spec.tag}_seed{seed}.npz')


_NAME_KEY, _VERSION_KEY = '__name__', '__version__'   # the file's own record of what it holds


def save_params(path: str, spec: ClassifierSpec, params) -> None:
  flat = flax.traverse_util.flatten_dict(params, sep='/')
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  files.save_npz(path, **{k: np.asarray(v) for k, v in flat.items()},
                 **{_NAME_KEY: np.array(spec.name), _VERSION_KEY: np.array(spec.version)})


def load_params(path: str, spec: ClassifierSpec) -> dict:
  """The params cached in `path`; ValueError (saying to delete the file) for a file that is
  unreadable, records another data set or version, or holds params of other names or shapes.
  A file without the record (digits classifiers cached before it existed) is judged by its
  params alone."""
  what = f'a v{spec.version} {spec.name} classifier'
  if spec.tag:
    what += f' ({spec.tag.strip("_")})'
  try:
    with np.load(path) as npz:
      got = {k: npz[k] for k in npz.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
    raise ValueError(f'{path} cannot be read as {what} ({type(err).__name__}: {err}); '
                     'delete it to retrain') from None
  name, version = got.pop(_NAME_KEY, None), got.pop(_VERSION_KEY, None)
  if version is not None and (str(name) != spec.name or int(version) != spec.version):
    raise ValueError(f'{path} holds a v{int(version)} {name} classifier, not {what} (this code '
                     f'trains v{spec.version}); delete it to retrain')
  want = flax.traverse_util.flatten_dict(_init_shapes(spec), sep='/')
  if set(got) != set(want) or any(got[k].shape != want[k].shape for k in want):
    raise ValueError(f'{path} does not hold {what}; delete it to retrain')
  return flax.traverse_util.unflatten_dict(got, sep='/')


def load_or_train(spec: ClassifierSpec, cache_dir: Optional[str], seed: int) -> dict:
  """The classifier cached in `cache_dir`, or one trained now (and cached there)."""
  path = cache_path(spec, cache_dir, seed) if cache_dir else None
  if path and os.path.exists(path):
    return load_params(path, spec)
  params = train_classifier(spec, seed)
  if path:
    save_params(path, spec, params)
  return params


@dataclasses.dataclass
class ClassifierMetric:
  """The trained classifier plus the statistics of the real held-out images."""
  spec: ClassifierSpec
  params: dict
  seed: int
  test_accuracy: float = 0.0
  reference: Optional[Statistics] = None

  @classmethod
  def from_spec(cls, spec: ClassifierSpec, cache_dir: Optional[str] = None, seed: int = 0,
                **fields) -> 'ClassifierMetric':
    """Loads the classifier from `cache_dir` or trains it (and caches it there), then scores
    the held-out split: `test_accuracy` and the reference statistics."""
    metric = cls(spec=spec, params=load_or_train(spec, cache_dir, seed), seed=seed, **fields)
    images, labels = spec.load('test')
    feats, logits = metric._forward(images)
    metric.test_accuracy = float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels)))
    metric.reference = Statistics.from_activations(feats)
    return metric

  def _check(self, images) -> np.ndarray:
    images = np.asarray(images)
    if np.issubdtype(images.dtype, np.integer) or images.dtype == bool:  # (bfloat16 is fine)
      raise ValueError(f'the {self.spec.name} metric takes float images in [-1, 1], got '
                       f'{images.dtype} (uint8 images: x / 127.5 - 1)')
    images = images.astype(np.float32)
    if images.ndim == 3:
      images = images[..., None]
    return np.clip(self.spec.prepare(images), -1.0, 1.0)

  def _forward(self, images) -> tuple[np.ndarray, np.ndarray]:
    """(features, logits) of the images, EVAL_CHUNK at a time."""
    images = self._check(images)
    model = self.spec.network()
    outs = [jax.device_get(_forward(model, self.params, jnp.asarray(images[i:i + EVAL_CHUNK])))
            for i in range(0, max(len(images), 1), EVAL_CHUNK)]
    return tuple(np.concatenate(parts) for parts in zip(*outs))

  def logits(self, images) -> np.ndarray:
    return self._forward(images)[1]

  def features(self, images) -> np.ndarray:
    return self._forward(images)[0]

  def predict(self, images) -> np.ndarray:
    return np.argmax(self.logits(images), axis=-1)

  def evaluate(self, images, labels=None) -> dict[str, float]:
    """{fd_key} and, when the requested `labels` are given, {'sample_class_acc'}."""
    feats, logits = self._forward(images)
    out = {self.spec.fd_key: frechet_distance(Statistics.from_activations(feats),
                                              self.reference)}
    if labels is not None:
      labels = np.asarray(labels)
      if labels.shape != (len(feats),):
        raise ValueError(f'need one label per image: {labels.shape} for {len(feats)} images')
      out['sample_class_acc'] = float(np.mean(np.argmax(logits, axis=-1) == labels))
    return out
