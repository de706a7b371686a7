"""Bytes a pytree of arrays takes in total and on each device under given shardings.

`abstract_bytes_per_device` works on shapes alone (jax.eval_shape output), so the footprint of
a model too large for this machine can be read off before anything is allocated;
`addressable_bytes` measures what really sits on a device.
"""
from __future__ import annotations

import math

import jax
import numpy as np


def _nbytes(shape, dtype) -> int:
  return math.prod(shape) * np.dtype(dtype).itemsize


def total_bytes(tree) -> int:
  """Unsharded size of every leaf (arrays or ShapeDtypeStructs)."""
  return sum(_nbytes(x.shape, x.dtype) for x in jax.tree.leaves(tree))


def abstract_bytes_per_device(tree, shardings) -> int:
  """Largest per-device footprint of `tree` laid out by `shardings` (one sharding per leaf).

  Shards of a NamedSharding are equal in size, so the per-device bytes are the shard shape's;
  replicated leaves count in full on every device.
  """
  return sum(_nbytes(s.shard_shape(x.shape), x.dtype)
             for x, s in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)))


def addressable_bytes(tree, device=None) -> int:
  """Bytes of the shards of `tree`'s arrays held on `device` (default: the first local one)."""
  device = jax.local_devices()[0] if device is None else device
  total = 0
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      if shard.device == device:
        total += shard.data.nbytes
  return total
