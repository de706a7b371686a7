"""Improved precision and recall (Kynkäänniemi et al., 2019) as ADM's evaluator computes them.

Each set of features defines a manifold: the union of balls around its points whose radius is
the distance to the point's k-th nearest neighbour in the same set (k = 3, the point itself not
counted). Precision is the fraction of generated points inside the real manifold, recall the
fraction of real points inside the generated one. Distances are squared Euclidean, compared with
`<=` against squared radii, as in ADM.

Pairwise distances are computed block by block (`block_size` rows x `block_size` columns, jitted,
on the default device), so 50K x 50K never has to be in memory: the k nearest neighbours are
merged across column blocks and the "inside some ball" flags are OR-ed. ADM evaluates the
distance blocks in float16 (falling back to float32 when they overflow); here they are float32.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _sq_distances(u, v):
  """(rows, cols) squared Euclidean distances, clamped at 0 like ADM's distance block."""
  hi = jax.lax.Precision.HIGHEST
  uu = jnp.sum(u * u, axis=1)[:, None]
  vv = jnp.sum(v * v, axis=1)[None, :]
  return jnp.maximum(uu - 2.0 * jnp.dot(u, v.T, precision=hi) + vv, 0.0)


@functools.partial(jax.jit, static_argnames=('num',))
def _merge_smallest(best, rows, cols, col_valid, num: int):
  """Keeps the `num` smallest distances per row seen so far, this column block included."""
  d = jnp.where(col_valid[None, :], _sq_distances(rows, cols), jnp.inf)
  block_best = -jax.lax.top_k(-d, min(num, d.shape[1]))[0]
  return -jax.lax.top_k(-jnp.concatenate([best, block_best], axis=1), num)[0]


@jax.jit
def _inside(rows, rows_radii, row_valid, cols, cols_radii, col_valid):
  """(row inside some column ball, column inside some row ball) for one pair of blocks."""
  d = _sq_distances(rows, cols)
  rows_in = jnp.any((d <= cols_radii[None, :]) & col_valid[None, :], axis=1)
  cols_in = jnp.any((d <= rows_radii[:, None]) & row_valid[:, None], axis=0)
  return rows_in, cols_in


def _blocks(features: np.ndarray, block_size: int):
  """Zero-padded (block, valid mask) pairs of equal shape, so each kernel compiles once."""
  n = len(features)
  size = min(block_size, -(-n // 8) * 8)
  for start in range(0, n, size):
    chunk = np.asarray(features[start:start + size], np.float32)
    valid = np.ones(size, bool)
    if len(chunk) < size:
      valid[len(chunk):] = False
      chunk = np.concatenate([chunk, np.zeros((size - len(chunk), chunk.shape[1]), np.float32)])
    yield start, jnp.asarray(chunk), jnp.asarray(valid)


def manifold_radii(features: np.ndarray, k: int = 3, block_size: int = 10000) -> np.ndarray:
  """Squared distance from each point to its k-th nearest neighbour in `features` (n,)."""
  features = np.asarray(features)
  if features.ndim != 2 or len(features) <= k:
    raise ValueError(f'need a (n, d) array with n > k={k} to estimate a manifold, '
                     f'got shape {features.shape}')
  radii = np.empty(len(features), np.float32)
  col_blocks = list(_blocks(features, block_size))
  for start, rows, row_valid in col_blocks:
    best = jnp.full((rows.shape[0], k + 1), jnp.inf, jnp.float32)
    for _, cols, col_valid in col_blocks:
      best = _merge_smallest(best, rows, cols, col_valid, num=k + 1)
    # Column 0 is the point itself (distance 0); column k is its k-th neighbour.
    count = int(np.sum(np.asarray(row_valid)))
    radii[start:start + count] = np.asarray(best[:count, k])
  return radii


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3,
                     block_size: int = 10000) -> tuple[float, float]:
  """(precision, recall) of `fake` features against `real` features, both (n, d)."""
  real, fake = np.asarray(real), np.asarray(fake)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f'features must be (n, d) with the same d, got {real.shape} and {fake.shape}')
  real_radii = manifold_radii(real, k, block_size)
  fake_radii = manifold_radii(fake, k, block_size)
  fake_in_real = np.zeros(len(fake), bool)
  real_in_fake = np.zeros(len(real), bool)
  fake_blocks = list(_blocks(fake, block_size))
  for r0, rows, row_valid in _blocks(real, block_size):
    n_rows = rows.shape[0]
    r_radii = jnp.asarray(np.pad(real_radii[r0:r0 + n_rows], (0, max(0, r0 + n_rows - len(real)))))
    for f0, cols, col_valid in fake_blocks:
      n_cols = cols.shape[0]
      f_radii = jnp.asarray(np.pad(fake_radii[f0:f0 + n_cols],
                                   (0, max(0, f0 + n_cols - len(fake)))))
      rows_in, cols_in = _inside(rows, r_radii, row_valid, cols, f_radii, col_valid)
      real_in_fake[r0:r0 + n_rows] |= np.asarray(rows_in)[:len(real_in_fake[r0:r0 + n_rows])]
      fake_in_real[f0:f0 + n_cols] |= np.asarray(cols_in)[:len(fake_in_real[f0:f0 + n_cols])]
  return float(np.mean(fake_in_real)), float(np.mean(real_in_fake))
