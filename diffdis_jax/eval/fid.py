"""FID, sFID, Inception Score and improved precision/recall by ADM's evaluator protocol.

The protocol (guided-diffusion `evaluations/evaluator.py`), which this module follows:
  * images are uint8 NHWC (the `arr_0` array of an `.npz` batch) fed to the FID Inception
    (`nn/inception.py`, preprocessing 'adm');
  * FID: Fréchet distance between Gaussians fitted to the 2048-d pool features of the samples
    and of the reference set; sFID: the same on the 2023-d `mixed_6/conv` spatial features;
  * IS: softmax of the unbiased logits (pool @ fc kernel), KL to the marginal averaged within
    consecutive splits of 5,000 samples, exponentiated, averaged over splits;
  * precision/recall: k=3 nearest-neighbour manifolds of the pool features, the reference side
    being the reference batch's own images (10,000 for ADM's ImageNet batches);
  * reference statistics are `mu`, `sigma` (pool) and `mu_s`, `sigma_s` (spatial) of the
    reference `.npz` when present, otherwise computed from its activations.

Statistics are float64 (np.cov with ddof=1, as ADM and pytorch-fid). The matrix square root is
checked: a non-finite, complex or inaccurate result is retried with `eps` on the diagonals (as
pytorch-fid and ADM do for the non-finite case) and raises if it is still wrong.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Iterator, Mapping, Optional
import warnings
import zipfile

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np
from scipy import linalg

from diffdis_jax.core import files
from diffdis_jax.eval.precision_recall import precision_recall
from diffdis_jax.nn.inception import InceptionV3, load_inception_variables

SQRTM_RTOL = 1e-3   # relative Frobenius residual of sqrtm(A) @ sqrtm(A) - A that we accept
IMAG_ATOL = 1e-3    # largest imaginary part on the diagonal that is numerical noise (ADM's bound)


@dataclasses.dataclass(frozen=True)
class Statistics:
  """Mean (d,) and covariance (d, d) of a set of activations, float64."""
  mu: np.ndarray
  sigma: np.ndarray

  @classmethod
  def from_activations(cls, activations: np.ndarray) -> 'Statistics':
    acts = np.asarray(activations, np.float64)
    if acts.ndim != 2 or len(acts) < 2:
      raise ValueError(f'need (n >= 2, d) activations for statistics, got shape {acts.shape}')
    return cls(acts.mean(axis=0), np.cov(acts, rowvar=False))


def _sqrtm_problem(root: np.ndarray, matrix: np.ndarray) -> Optional[str]:
  """Why `root` is not an acceptable square root of `matrix`, or None."""
  if not np.isfinite(root).all():
    return 'the matrix square root is not finite'
  if np.iscomplexobj(root):
    imag = np.max(np.abs(np.diagonal(root).imag))
    if imag > IMAG_ATOL:
      return f'the matrix square root has an imaginary component {imag:.3g} on its diagonal'
  residual = np.linalg.norm(root @ root - matrix) / max(np.linalg.norm(matrix), 1e-300)
  if residual > SQRTM_RTOL:
    return f'the matrix square root is inaccurate (relative residual {residual:.3g})'
  return None


def frechet_distance(a: Statistics, b: Statistics, eps: float = 1e-6) -> float:
  """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)), in float64."""
  mu1 = np.atleast_1d(np.asarray(a.mu, np.float64))
  mu2 = np.atleast_1d(np.asarray(b.mu, np.float64))
  s1 = np.atleast_2d(np.asarray(a.sigma, np.float64))
  s2 = np.atleast_2d(np.asarray(b.sigma, np.float64))
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
    raise ValueError(f'statistics do not match: means {mu1.shape} and {mu2.shape}, '
                     f'covariances {s1.shape} and {s2.shape}')
  diff = mu1 - mu2
  for offset in (0.0, eps):
    # The product can be nearly singular (fewer samples than dimensions); the offset fixes that.
    shift = np.eye(len(s1)) * offset
    product = (s1 + shift) @ (s2 + shift)
    covmean = linalg.sqrtm(product)
    problem = _sqrtm_problem(covmean, product)
    if problem is None:
      break
    if offset:
      raise FloatingPointError(f'Fréchet distance: {problem} even with {eps} added to the '
                               'covariance diagonals; are the statistics finite and PSD?')
    warnings.warn(f'Fréchet distance: {problem}; retrying with {eps} on the covariance diagonals')
  tr_covmean = np.trace(covmean).real
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def inception_score(logits: np.ndarray, split_size: int = 5000) -> float:
  """exp(E_x KL(p(y|x) || p(y))) within consecutive splits of `split_size`, averaged.

  Takes logits (ADM's softmax uses the fc kernel without bias: 'logits_unbiased') and works in
  log space, so probabilities that underflow to 0 contribute 0 rather than NaN.
  """
  logits = np.asarray(logits, np.float64)
  if logits.ndim != 2 or not len(logits):
    raise ValueError(f'need (n, classes) logits, got shape {logits.shape}')
  log_p = logits - np.max(logits, axis=1, keepdims=True)
  log_p -= np.log(np.sum(np.exp(log_p), axis=1, keepdims=True))
  scores = []
  for start in range(0, len(log_p), split_size):
    part = log_p[start:start + split_size]
    p = np.exp(part)
    log_marginal = np.log(np.mean(p, axis=0, keepdims=True))
    kl = np.sum(p * (part - log_marginal), axis=1)
    scores.append(np.exp(np.mean(kl)))
  return float(np.mean(scores))


# ----------------------------------------------------------------------------- references


@dataclasses.dataclass
class Reference:
  """What the metrics need from the reference set.

  `pool` holds reference pool activations for precision/recall; `spatial_stats` is needed for
  sFID. Either may be None, and then that metric is left out.
  """
  pool_stats: Statistics
  spatial_stats: Optional[Statistics] = None
  pool: Optional[np.ndarray] = None
  source: str = ''

  @classmethod
  def from_activations(cls, activations: Mapping[str, np.ndarray], source: str = ''):
    spatial = activations.get('spatial')
    return cls(Statistics.from_activations(activations['pool']),
               None if spatial is None else Statistics.from_activations(spatial),
               np.asarray(activations['pool'], np.float32), source)


def iter_npz_array(path: str, key: str = 'arr_0', batch_size: int = 250) -> Iterator[np.ndarray]:
  """Yields `key` of an `.npz` file in batches along axis 0 without loading it whole.

  ADM's reference batches hold 10,000 256x256 images (2 GB); streaming keeps memory flat.
  """
  with zipfile.ZipFile(path) as archive:
    names = [n[:-4] for n in archive.namelist() if n.endswith('.npy')]
    if key not in names:
      raise KeyError(f'{path} has no array {key!r}; it holds {names}')
    with archive.open(f'{key}.npy') as f:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
      elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
      else:
        fortran, dtype, shape = True, None, None  # unusual format: fall back to a full load
      if not fortran and not dtype.hasobject and shape:
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        for start in range(0, shape[0], batch_size):
          count = min(batch_size, shape[0] - start)
          data = _read_exactly(f, count * row_bytes, path)
          yield np.frombuffer(data, dtype).reshape(count, *shape[1:])
        return
  with np.load(path) as npz:
    array = npz[key]
  for start in range(0, len(array), batch_size):
    yield array[start:start + batch_size]


def _read_exactly(f, size: int, path: str) -> bytes:
  chunks, got = [], 0
  while got < size:
    chunk = f.read(size - got)
    if not chunk:
      raise ValueError(f'{path} is truncated: expected {size} more bytes, got {got}')
    chunks.append(chunk)
    got += len(chunk)
  return b''.join(chunks)


def read_reference(path: str, features=None, batch_size: int = 250) -> Reference:
  """Reference statistics and activations from an `.npz` file.

  Accepts ADM's reference batches (`arr_0` uint8 images plus `mu`, `sigma`, `mu_s`, `sigma_s`)
  and files written by `save_reference` (the statistics plus `pool` activations). Images are run
  through `features` (e.g. `InceptionExtractor`, a callable from a uint8 batch to a dict of
  activations) only when something is missing: the activations for precision/recall, or the
  statistics.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f'reference statistics {path} do not exist')
  with np.load(path) as npz:
    keys = set(npz.files)
    stats = {k: npz[k] for k in ('mu', 'sigma', 'mu_s', 'sigma_s') if k in keys}
    pool = npz['pool'].astype(np.float32) if 'pool' in keys else None
    spatial = npz['spatial'] if 'spatial' in keys else None
  need_images = pool is None or 'mu' not in stats or ('mu_s' not in stats and spatial is None)
  if need_images and 'arr_0' in keys and features is not None:
    acts = extract_from_batches(features, iter_npz_array(path, 'arr_0', batch_size))
    pool = acts['pool'] if pool is None else pool
    spatial = acts.get('spatial') if spatial is None else spatial
  if 'mu' in stats:
    pool_stats = Statistics(stats['mu'], stats['sigma'])
  elif pool is not None:
    pool_stats = Statistics.from_activations(pool)
  else:
    raise ValueError(f"{path} has neither 'mu'/'sigma' nor activations; it holds {sorted(keys)}. "
                     "Pass `features` (the Inception extractor) to compute them from 'arr_0'.")
  if 'mu_s' in stats:
    spatial_stats = Statistics(stats['mu_s'], stats['sigma_s'])
  else:
    spatial_stats = None if spatial is None else Statistics.from_activations(spatial)
  return Reference(pool_stats, spatial_stats, pool, source=os.path.abspath(path))


def save_reference(path: str, activations: Mapping[str, np.ndarray], overwrite: bool = False):
  """Writes `mu`, `sigma`, `mu_s`, `sigma_s` (ADM's keys) and the `pool` activations.

  Refuses to replace an existing file unless `overwrite`; writes to a temporary file first so an
  interrupted write leaves nothing half-written.
  """
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f'{path} exists; pass overwrite=True to replace it')
  ref = Reference.from_activations(activations)
  arrays = {'mu': ref.pool_stats.mu, 'sigma': ref.pool_stats.sigma, 'pool': ref.pool}
  if ref.spatial_stats is not None:
    arrays.update(mu_s=ref.spatial_stats.mu, sigma_s=ref.spatial_stats.sigma)
  files.save_npz(path, **arrays)


def extract_from_batches(features, batches: Iterable[np.ndarray]) -> dict[str, np.ndarray]:
  """Runs `features` (batch -> dict of arrays) over batches and concatenates each output."""
  outputs: dict[str, list[np.ndarray]] = {}
  for batch in batches:
    for key, value in features(batch).items():
      outputs.setdefault(key, []).append(np.asarray(value))
  if not outputs:
    raise ValueError('no images to compute activations from')
  return {k: np.concatenate(v) for k, v in outputs.items()}


# ----------------------------------------------------------------------------- all metrics


def compute_metrics(samples: Mapping[str, np.ndarray], reference, *, k: int = 3,
                    is_split_size: int = 5000, pr_block_size: int = 10000) -> dict[str, float]:
  """Every metric the activations allow, as a dict of floats.

  `samples`: activations of the generated images ('pool' required; 'spatial' gives sFID,
  'logits_unbiased' gives IS). `reference`: a `Reference`, or activations like `samples`.
  Keys: fid, sfid, inception_score, precision, recall, num_samples, num_reference.
  """
  if not isinstance(reference, Reference):
    reference = Reference.from_activations(reference)
  if 'pool' not in samples:
    raise ValueError(f"sample activations need 'pool'; got {sorted(samples)}")
  pool = np.asarray(samples['pool'])
  out = {'num_samples': float(len(pool)),
         'fid': frechet_distance(Statistics.from_activations(pool), reference.pool_stats)}
  if samples.get('spatial') is not None and reference.spatial_stats is not None:
    out['sfid'] = frechet_distance(Statistics.from_activations(samples['spatial']),
                                   reference.spatial_stats)
  if samples.get('logits_unbiased') is not None:
    out['inception_score'] = inception_score(samples['logits_unbiased'], is_split_size)
  if reference.pool is not None:
    out['precision'], out['recall'] = precision_recall(reference.pool, pool, k, pr_block_size)
    out['num_reference'] = float(len(reference.pool))
  return out


# ----------------------------------------------------------------------------- Inception


def to_uint8(images) -> np.ndarray:
  """[-1, 1] float images -> uint8 [0, 255] as DiT's sampler stores them (round half up)."""
  return np.clip(127.5 * np.asarray(images, np.float32) + 128.0, 0, 255).astype(np.uint8)


class InceptionExtractor:
  """Jitted FID-Inception activations for uint8 NHWC batches, split over the local devices.

  Batches are padded to a fixed `batch_size` (a multiple of the device count) so the network
  compiles once. Returns float32 numpy arrays for `keys` (see `nn/inception.py`).
  """

  def __init__(self, variables, *, preprocess: str = 'adm', batch_size: int = 200,
               keys=('pool', 'spatial', 'logits_unbiased'), devices=None):
    devices = list(devices or jax.local_devices())
    mesh = Mesh(np.array(devices), ('batch',))
    self.batch_size = -(-batch_size // len(devices)) * len(devices)
    self.keys = tuple(keys)
    self._batch_sharding = NamedSharding(mesh, PartitionSpec('batch'))
    self._variables = jax.device_put(variables, NamedSharding(mesh, PartitionSpec()))
    net = InceptionV3(preprocess=preprocess)
    self._apply = jax.jit(lambda v, x: {k: net.apply(v, x)[k] for k in self.keys})

  @classmethod
  def from_file(cls, path: str, **kwargs) -> 'InceptionExtractor':
    """From a safetensors file of pytorch-fid's weights (see `nn/inception.py`)."""
    if not os.path.exists(path):
      raise FileNotFoundError(f'Inception weights {path} do not exist; see nn/inception.py for '
                              'the one-line conversion of pytorch-fid weights to safetensors')
    return cls(load_inception_variables(path), **kwargs)

  def __call__(self, images) -> dict[str, np.ndarray]:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f'expected NHWC RGB images, got shape {images.shape}')
    outputs: dict[str, list[np.ndarray]] = {k: [] for k in self.keys}
    for start in range(0, len(images), self.batch_size):
      chunk = images[start:start + self.batch_size]
      count = len(chunk)
      if count < self.batch_size:
        pad = np.zeros((self.batch_size - count, *chunk.shape[1:]), chunk.dtype)
        chunk = np.concatenate([chunk, pad])
      result = self._apply(self._variables, jax.device_put(chunk, self._batch_sharding))
      for k in self.keys:
        outputs[k].append(np.asarray(result[k])[:count])
    return {k: np.concatenate(v) for k, v in outputs.items()}


def evaluate_files(samples_path: str, reference_path: str, extractor: InceptionExtractor,
                   batch_size: int = 250, **metric_kwargs) -> dict[str, float]:
  """Every metric for an ADM-format samples `.npz` (uint8 `arr_0`) against a reference `.npz`.

  What `--mode=eval` needs: streams both files through the Inception `extractor`.
  """
  reference = read_reference(reference_path, extractor, batch_size)
  samples = extract_from_batches(extractor, iter_npz_array(samples_path, 'arr_0', batch_size))
  return compute_metrics(samples, reference, **metric_kwargs)
