"""A real small file system for tests of a full disk: a tmpfs mounted for the test.

Mounting needs root (or CAP_SYS_ADMIN); elsewhere the tests that need one are skipped with
that reason rather than run against a stand-in that would not exercise the libraries' own C++
and Rust writers (tensorstore, array_record, safetensors).
"""
import contextlib
import os
import subprocess

import pytest


@contextlib.contextmanager
def small_disk(folder, size: str):
  """`folder` (created) as a tmpfs of `size` ('1600k', '8m') until the block ends."""
  folder = str(folder)
  os.makedirs(folder, exist_ok=True)
  if os.geteuid() != 0:
    pytest.skip('a small file system for a full disk needs root to mount a tmpfs')
  mount = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', folder],
                         capture_output=True, text=True, check=False)
  if mount.returncode:
    pytest.skip(f'cannot mount a tmpfs here: {mount.stderr.strip()}')
  try:
    yield folder
  finally:
    subprocess.run(['umount', '-l', folder], check=False)


def resize(folder, size: str):
  """Space freed (or taken) on a mounted small disk, its files kept."""
  subprocess.run(['mount', '-o', f'remount,size={size}', str(folder)], check=True)


def fill(folder, leave: int):
  """Takes all free space of `folder`'s file system but about `leave` bytes; returns the
  filler's path (delete it to free the space again)."""
  path = os.path.join(str(folder), 'filler')
  free = os.statvfs(str(folder)).f_bavail * os.statvfs(str(folder)).f_frsize
  with open(path, 'wb') as f:
    f.write(b'\0' * max(free - leave, 0))
  return path
