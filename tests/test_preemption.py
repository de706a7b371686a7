"""The SIGTERM flag: set by the signal, read by the loop, and gone with the context.

The whole path (a training process saving its step on SIGTERM, exiting 0, and a restart
continuing from there) is in tests/test_resume.py.
"""
import os
import signal

from diffdis_jax.train import preemption


class _NoService:
  def reached_preemption(self, step):
    raise AssertionError('a single process must not ask the jax preemption service')


def test_sigterm_sets_the_stop_flag_and_the_old_handler_comes_back():
  seen = []
  previous = signal.signal(signal.SIGTERM, lambda *a: seen.append('old handler'))
  try:
    stop = preemption.StopRequest(_NoService(), check_every=10)
    with preemption.sigterm_requests_stop():
      assert not stop.reached(1)
      os.kill(os.getpid(), signal.SIGTERM)  # the process lives on
      assert stop.reached(2) and stop.reached(3)
      assert seen == []
    assert not stop.reached(4)  # cleared on the way out
    os.kill(os.getpid(), signal.SIGTERM)
    assert seen == ['old handler']
  finally:
    signal.signal(signal.SIGTERM, previous)


def test_a_new_run_starts_without_an_old_request():
  preemption.request_stop()
  with preemption.sigterm_requests_stop():
    assert not preemption.StopRequest(_NoService()).reached(1)
