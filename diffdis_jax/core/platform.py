"""The platform a program is traced for: this process's backend, or the target of an export.

Some kernel choices are made in Python while a step is traced (nn/attention.py: the einsum
attention on CPU, Pallas splash attention compiled or interpreted; nn/convolution.py:
im2col on CPU). They must follow where the program will run, not where it is traced: a
step exported for TPU from a CPU host has to carry the TPU choices. `target_platform()` is
what they ask; `targeting(platform)` sets it for a `jax.export` (or any lowering) made for a
platform this host does not have, and `export_for` does both.

The target is a jax user context, so it is part of jit's cache key: a function traced for
one target is traced again for another rather than served from the cache.
"""
from __future__ import annotations

import contextlib

import jax
from jax import export as jax_export

# jax.export's platform names, and the family each one's kernel choices follow
EXPORT_PLATFORMS = {'cpu': 'cpu', 'cuda': 'gpu', 'rocm': 'gpu', 'tpu': 'tpu'}

_TARGET = jax.make_user_context(None)


def target_platform() -> str:
  """'cpu', 'gpu' or 'tpu': the platform set by `targeting`, else `jax.default_backend()`."""
  return _TARGET.value or jax.default_backend()


@contextlib.contextmanager
def targeting(platform: str):
  """Traces inside make the choices of `platform` (a jax.export name: cpu, cuda, rocm, tpu)."""
  if platform not in EXPORT_PLATFORMS:
    raise ValueError(f'platform must be one of {sorted(EXPORT_PLATFORMS)}, got {platform!r}')
  with _TARGET(EXPORT_PLATFORMS[platform]):
    yield


def export_for(jitted, platform: str, *args) -> jax_export.Exported:
  """`jax.export` of `jitted` at `args` (arrays or ShapeDtypeStructs with shardings) for
  `platform`, traced with that platform's kernel choices; no device of it is needed."""
  with targeting(platform):
    return jax_export.export(jitted, platforms=[platform])(*args)
