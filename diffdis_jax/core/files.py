"""Files that appear whole or not at all.

A run can be killed at any moment (preemption, a timeout): a reader must never find half a
file. Everything the package writes goes to a temporary name beside the target and is renamed
over it once complete (`os.replace` is atomic on one file system).

A write that fails for lack of space raises `DiskFull`, which names what was being written,
where, and about how much space it needed; `launch/main.py` turns it into one line. The
temporary file is removed first, so a full disk leaves nothing half-written behind.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import sys
import traceback
from typing import Callable

import numpy as np

from diffdis_jax.core import checks

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# what the OS says; writers in C++ or Rust (tensorstore under orbax, array_record,
# safetensors) raise their own exception types with these words and no errno
_DISK_FULL_WORDS = ('No space left on device', 'Disk quota exceeded')


def is_disk_full(error: BaseException | None) -> bool:
  """`error`, or an exception it was raised from, is the OS refusing a write for lack of space."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
      return True
    if any(words in str(error) for words in _DISK_FULL_WORDS):
      return True
    error = error.__cause__ or error.__context__
  return False


def _is_abandoned_write(error: BaseException | None, tb=None) -> bool:
  """Whether `error` is tensorstore's callback into an asyncio loop that orbax has closed."""
  tb = tb or getattr(error, '__traceback__', None)
  return (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'
          and any(frame.f_code.co_name == 'call_soon_threadsafe'
                  for frame, _ in traceback.walk_tb(tb)))


def quiet_abandoned_writes():
  """Drops the reports of writes that end after orbax closed their save's asyncio loop.

  When one write of an async save fails (a full disk), orbax ends the save's event loop while
  its other writes still run in tensorstore. As each ends, tensorstore calls back into the
  closed loop, and the `RuntimeError: Event loop is closed` is printed with its traceback,
  through `sys.unraisablehook` (tensorstore's done-callbacks) or `sys.excepthook`: hundreds of
  echoes of the one failure, which reaches the main thread and is reported there. Every other
  report goes to the hooks installed before.
  """
  previous_excepthook, previous_unraisablehook = sys.excepthook, sys.unraisablehook

  def excepthook(kind, value, tb):
    if not _is_abandoned_write(value, tb):
      previous_excepthook(kind, value, tb)

  def unraisablehook(report):
    if not _is_abandoned_write(report.exc_value, report.exc_traceback):
      previous_unraisablehook(report)

  sys.excepthook, sys.unraisablehook = excepthook, unraisablehook


def human_bytes(n: int | float) -> str:
  for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
    if abs(n) < 1024 or unit == 'TiB':
      return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.1f} {unit}'
    n /= 1024


def free_bytes(path: str) -> int | None:
  """Free space on the file system that holds `path` (or its nearest existing parent)."""
  path = os.path.abspath(path)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  try:
    return shutil.disk_usage(path).free
  except OSError:
    return None


class DiskFull(OSError):
  """`what` could not be written to `path`: no space left (about `needed` bytes were needed)."""

  def __init__(self, what: str, path: str, needed: int | None = None):
    super().__init__(errno.ENOSPC, f'no space left to write {what}', path)
    self.what, self.path, self.needed = what, path, needed

  def describe(self) -> str:
    """What failed, where, what it needed and what is free, in one line."""
    sizes = [f'needs about {human_bytes(self.needed)}'] if self.needed else []
    free = free_bytes(self.path)
    if free is not None:
      sizes.append(f'{human_bytes(free)} free there now')
    return (f'disk full: could not write {self.what} to {self.path}'
            + (f' ({", ".join(sizes)})' if sizes else ''))


def find_disk_full(error: BaseException, default_path: str) -> DiskFull | None:
  """The `DiskFull` among `error` and the exceptions it was raised from; for a full disk that
  no writer here named (a library's own file), one naming the OS's file name or
  `default_path`; None when `error` is not about a full disk."""
  if not is_disk_full(error):
    return None
  return (checks.find_cause(error, DiskFull)
          or DiskFull('a file', getattr(error, 'filename', None) or default_path))


@contextlib.contextmanager
def reporting_disk_full(what: str, path: str, needed: int | Callable[[], int] | None = None):
  """Raises `DiskFull(what, path, needed)` from an error of the block that means a full disk;
  `needed` may be a function, asked only then (for writers that learn their size as they go)."""
  try:
    yield
  except DiskFull:
    raise
  except Exception as e:  # pylint: disable=broad-except
    if not is_disk_full(e):
      raise
    raise DiskFull(what, path, needed() if callable(needed) else needed) from e


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = '', *, what: str | None = None,
                needed: int | Callable[[], int] | None = None):
  """Yields a temporary path beside `path` to write; it becomes `path` when the block ends
  without an exception, and is removed otherwise.

  `suffix` ends the temporary name, for writers that add an extension when it is missing
  (numpy's savez: '.npz'). A full disk raises `DiskFull` naming `what` (by default the file's
  name) and `needed` bytes.
  """
  tmp = f'{path}.tmp{suffix}'
  try:
    with reporting_disk_full(what or os.path.basename(path), path, needed):
      yield tmp
      os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> str:
  data = text.encode()
  with atomic_path(path, needed=len(data)) as tmp, open(tmp, 'wb') as f:
    f.write(data)
  return path


def append_text(path: str, text: str, what: str | None = None):
  """`text` appended to `path`, whole or not at all: a write cut short by a full disk is cut
  back off (a reader must not find half a line), then `DiskFull` is raised."""
  view = memoryview(text.encode())
  fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
  try:
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
      with reporting_disk_full(what or os.path.basename(path), path, len(view)):
        while view:  # unbuffered: nothing is left to flush (and fail again) at close
          view = view[os.write(fd, view):]
    except DiskFull:
      with contextlib.suppress(OSError):
        os.ftruncate(fd, start)
      raise
  finally:
    os.close(fd)


def write_json(path: str, data, **dump_options) -> str:
  """`data` as indented JSON with sorted keys (override through `dump_options`)."""
  options = dict(indent=1, sort_keys=True) | dump_options
  return write_text(path, json.dumps(data, **options) + '\n')


def save_npz(path: str, **arrays) -> str:
  needed = sum(np.asarray(a).nbytes for a in arrays.values())
  with atomic_path(path, suffix='.npz', needed=needed) as tmp:
    np.savez(tmp, **arrays)
  return path


def copy_file(src: str, dst: str) -> str:
  with atomic_path(dst, needed=os.path.getsize(src)) as tmp:
    shutil.copyfile(src, tmp)
  return dst


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(chunk), b''):
      digest.update(block)
  return digest.hexdigest()


@contextlib.contextmanager
def exclusive_folder(folder: str):
  """Yields True while this process alone holds `folder` (an advisory flock on the folder
  itself, so nothing is written into it), False at once if another process holds it. The
  kernel drops the lock when the holder dies, so a killed holder never leaves a stale one."""
  fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      yield False
      return
    yield True
  finally:
    os.close(fd)  # closing the last descriptor releases the lock
