"""Which dtype a config's `compute_dtype` computes in on the platform a run targets, and why.

    resolve_compute_dtype('auto')  # ('float32', "compute_dtype='auto': this CPU has no ...")

'float32', 'bfloat16' and 'float16' name themselves. 'auto' is bfloat16 where the platform
multiplies bfloat16 in hardware, and float32 elsewhere:

  tpu  bfloat16: every TPU's matrix unit multiplies bfloat16.
  gpu  bfloat16 at compute capability 8.0 and above (Ampere's tensor cores and later), and
       where the capability is unknown (a step exported for a GPU from a host without one);
       float32 below 8.0, whose tensor cores have no bfloat16.
  cpu  bfloat16 when the CPU lists `avx512_bf16` or `amx_bf16` among its flags (Zen 4 and 5,
       Intel from Cooper Lake and Sapphire Rapids); float32 otherwise, where bfloat16 has no
       hardware to run on. (Issue 34: on a host with those units our bfloat16 step is still
       slower than float32, so no recipe uses 'auto' yet.)

Parameters, optimizer state, EMAs and the EDM preconditioning are float32 whatever this says
(tests/test_compute_dtype.py). The CPU flags are read from /proc/cpuinfo once; tests pass
their own with `cpu_flags=`.
"""
from __future__ import annotations

import functools
from typing import Iterable, Optional

from diffdis_jax.core.platform import target_platform

EXPLICIT = ('float32', 'bfloat16', 'float16')
NAMES = EXPLICIT + ('auto',)   # what config.compute_dtype may be
# names people write for these dtypes, for the one-line error's hint
ALIASES = {'bf16': 'bfloat16', 'fp16': 'float16', 'half': 'float16', 'f16': 'float16',
           'fp32': 'float32', 'f32': 'float32', 'float': 'float32'}
BF16_CPU_FLAGS = ('amx_bf16', 'avx512_bf16')
BF16_GPU_CAPABILITY = 8.0


@functools.lru_cache(maxsize=None)
def host_cpu_flags(path: str = '/proc/cpuinfo') -> frozenset:
  """The flags of this host's CPU (Linux); empty where the file cannot be read."""
  try:
    with open(path) as f:
      return parse_cpu_flags(f.read())
  except OSError:
    return frozenset()


def parse_cpu_flags(cpuinfo: str) -> frozenset:
  """The words of the first `flags` line of /proc/cpuinfo's text (every core lists the same)."""
  for line in cpuinfo.splitlines():
    key, _, value = line.partition(':')
    if key.strip() == 'flags':
      return frozenset(value.split())
  return frozenset()


def vector_isa(flags: Iterable[str]) -> str:
  """The widest x86 vector extension among `flags`, as people name it."""
  flags = set(flags)
  if 'avx512f' in flags:
    return 'AVX-512'
  if 'avx2' in flags:
    return 'AVX2'
  return 'no AVX2' if flags else 'flags unknown'


def _gpu_capability() -> Optional[float]:
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() != 'gpu':
    return None
  try:
    return float(jax.devices()[0].compute_capability)
  except (AttributeError, TypeError, ValueError):
    return None


def resolve_compute_dtype(name: str, platform: Optional[str] = None,
                          cpu_flags: Optional[Iterable[str]] = None,
                          gpu_capability: Optional[float] = None) -> tuple[str, str]:
  """(dtype name, why) of `name` for `platform` (default: the target, core/platform.py).

  `cpu_flags` and `gpu_capability` default to this host's; the reason is a clause for the
  run's log line, e.g. "compute_dtype='auto': this CPU has no bf16 units (AVX2)".
  """
  if name in EXPLICIT:
    return name, f'compute_dtype={name!r}'
  if name != 'auto':
    raise ValueError(f'compute_dtype must be one of {", ".join(NAMES)}, got {name!r}')
  platform = platform or target_platform()
  if platform == 'tpu':
    return 'bfloat16', "compute_dtype='auto': TPUs multiply bfloat16 in hardware"
  if platform == 'gpu':
    capability = _gpu_capability() if gpu_capability is None else gpu_capability
    if capability is not None and capability < BF16_GPU_CAPABILITY:
      return 'float32', (f"compute_dtype='auto': this GPU (compute capability {capability}) "
                         'has no bf16 tensor cores')
    known = 'unknown' if capability is None else capability
    return 'bfloat16', (f"compute_dtype='auto': GPU tensor cores multiply bfloat16 "
                        f'(compute capability {known})')
  flags = host_cpu_flags() if cpu_flags is None else frozenset(cpu_flags)
  units = sorted(flags & set(BF16_CPU_FLAGS))
  if units:
    return 'bfloat16', f"compute_dtype='auto': this CPU has bf16 units ({', '.join(units)})"
  return 'float32', (f"compute_dtype='auto': this CPU has no bf16 units "
                     f'({vector_isa(flags)})')
