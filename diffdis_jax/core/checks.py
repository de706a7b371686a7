"""The one-line answer to bad input: `ConfigError` and the helpers that phrase it.

Every check of a run's input raises `ConfigError` with one line that says what is wrong and
how to fix it; `launch/main.py` prints that line and exits with status 2 before anything is
compiled or written. Errors of lower layers that mean bad input (a mesh that does not fit the
devices, a workdir holding another run) subclass it, so one `except` catches them all.
"""
from __future__ import annotations

import os
from typing import Iterable


class ConfigError(ValueError):
  pass


def find_cause(error: BaseException | None, kind: type) -> BaseException | None:
  """The first exception of type `kind` among `error` and those it was raised from (threads
  and libraries wrap what they pass on)."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, kind):
      return error
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None


def check(ok: bool, message: str):
  if not ok:
    raise ConfigError(message)


def one_of(value, allowed: Iterable, field: str):
  allowed = list(allowed)
  check(value in allowed, f'{field}={value!r} is not one of {allowed}; '
                          f'pass --config.{field}=<one of them>')


def positive_int(value, field: str):
  check(isinstance(value, int) and not isinstance(value, bool) and value > 0,
        f'{field} must be a positive integer, got {value!r}; pass --config.{field}=N')


def existing_file(path: str, field: str, hint: str):
  check(bool(path), f'{field} is not set; pass --config.{field}=PATH ({hint})')
  check(os.path.isfile(path), f'{field}={path!r} does not exist; pass --config.{field}=PATH '
                              f'({hint})')


def has_checkpoint(workdir: str):
  """The workdir holds at least one finished checkpoint step (orbax's numbered folders)."""
  steps = os.path.join(workdir, 'checkpoints')
  check(os.path.isdir(steps) and any(n.isdigit() for n in os.listdir(steps)),
        f'no checkpoint under {steps}: train first, or pass the --workdir of a trained run')
