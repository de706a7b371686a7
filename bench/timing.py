"""Median wall time of repeated calls: the one timing loop of the benchmarks."""
from __future__ import annotations

import time

import numpy as np


def median_seconds(fn, steps: int, warmup: int, block=lambda result: result) -> float:
  """Median wall seconds of `steps` calls of `fn` after `warmup` untimed ones. `block(result)`
  waits for work the call left running: jax.block_until_ready for jax, nothing for a function
  that synchronises itself (a torch step ends with cuda.synchronize)."""
  for _ in range(warmup):
    block(fn())
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    block(fn())
    times.append(time.perf_counter() - start)
  return float(np.median(times))
