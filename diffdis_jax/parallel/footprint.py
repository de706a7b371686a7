"""Bytes a pytree of arrays takes in total and on each device under given shardings.

`abstract_bytes_per_device` works on shapes alone (jax.eval_shape output), so the footprint of
a model too large for this machine can be read off before anything is allocated;
`addressable_bytes` measures what really sits on a device.
"""
from __future__ import annotations

import math
import re

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


# ----------------------------------------------------------------------------- collectives

COLLECTIVES = ('all-gather', 'reduce-scatter', 'all-reduce', 'all-to-all', 'collective-permute')
_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
                'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8}
_OP = re.compile(r'\s*(?:ROOT\s+)?%?[\w.\-]+\s*=\s*(.*?)\s+([a-z\-]+)\(')
_SHAPE = re.compile(r'\b([a-z]+\d*)\[([\d,]*)\]')


def collectives(hlo_text: str) -> list[tuple[str, list[tuple[str, tuple[int, ...]]]]]:
  """(kind, result shapes as (dtype, dims)) of every collective in an HLO module's text.

  Asynchronous pairs are listed once (their -start); ops inside loops once per appearance.
  """
  found = []
  for line in hlo_text.splitlines():
    m = _OP.match(line)
    if not m or m.group(2).endswith('-done'):
      continue
    kind = m.group(2).removesuffix('-start')
    if kind in COLLECTIVES:
      shapes = [(dtype, tuple(int(d) for d in dims.split(',') if d))
                for dtype, dims in _SHAPE.findall(m.group(1)) if dtype in _DTYPE_BYTES]
      found.append((kind, shapes))
  return found


def collective_bytes(hlo_text: str) -> dict[str, dict[str, int]]:
  """Count and result bytes of each kind of collective in an optimised HLO module (one
  device's program), e.g. `compiled.as_text()`."""
  out = {}
  for kind, shapes in collectives(hlo_text):
    entry = out.setdefault(kind, {'count': 0, 'bytes': 0})
    entry['count'] += 1
    entry['bytes'] += sum(_DTYPE_BYTES[d] * math.prod(dims) for d, dims in shapes)
  return out
