"""Stopping cleanly when the scheduler asks: SIGTERM -> save the current step, exit 0.

A SIGTERM handler only sets a flag; the training loop asks `StopRequest.reached(step)` once per
step and, when it says yes, saves that step (waiting for any async save in flight) and returns.

All processes of a multi-host run must stop at the same step, or the collectives of the next
step hang. Two ways, in this order:
- jax's preemption service (on by default after `jax.distributed.initialize`): its notifier
  catches SIGTERM itself and the coordination service picks one step at which
  `reached_preemption_sync_point` (orbax: `CheckpointManager.reached_preemption`) is true on
  every process. No Python handler is installed then, since it would replace jax's.
- without that service: our flag, OR-ed over processes with a small all-gather every
  `preemption_check_every` steps (a host round trip; every step would slow small steps).
A single process checks its flag every step (free).
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils

_requested = threading.Event()


def request_stop():
  """What the SIGTERM handler does; also callable directly (tests, notebooks)."""
  _requested.set()


def _handler(signum, frame):
  del frame
  logging.warning('signal %d: saving the current step and stopping', signum)
  request_stop()


def _jax_service_active() -> bool:
  return jax.process_count() > 1 and bool(jax.config.jax_enable_preemption_service)


@contextlib.contextmanager
def sigterm_requests_stop():
  """Within: SIGTERM asks the training loop to save and stop instead of killing the process."""
  _requested.clear()
  if _jax_service_active() or threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.signal(signal.SIGTERM, _handler)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, previous)
    _requested.clear()


class StopRequest:
  """`reached(step)`: true on every process at the same step once a stop was asked for."""

  def __init__(self, manager, check_every: int = 10):
    self.manager, self.check_every = manager, check_every

  def reached(self, step: int) -> bool:
    if _jax_service_active():
      return bool(self.manager.reached_preemption(step))
    if jax.process_count() == 1:
      return _requested.is_set()
    if step % self.check_every:
      return False
    flags = multihost_utils.process_allgather(np.int32(_requested.is_set()))
    return bool(np.max(flags))
