"""Files that appear whole or not at all.

A run can be killed at any moment (preemption, a timeout): a reader must never find half a
file. Everything the package writes goes to a temporary name beside the target and is renamed
over it once complete (`os.replace` is atomic on one file system).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ''):
  """Yields a temporary path beside `path` to write; it becomes `path` when the block ends
  without an exception, and is removed otherwise.

  `suffix` ends the temporary name, for writers that add an extension when it is missing
  (numpy's savez: '.npz').
  """
  tmp = f'{path}.tmp{suffix}'
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> str:
  with atomic_path(path) as tmp, open(tmp, 'w') as f:
    f.write(text)
  return path


def write_json(path: str, data, **dump_options) -> str:
  """`data` as indented JSON with sorted keys (override through `dump_options`)."""
  options = dict(indent=1, sort_keys=True) | dump_options
  return write_text(path, json.dumps(data, **options) + '\n')


def save_npz(path: str, **arrays) -> str:
  with atomic_path(path, suffix='.npz') as tmp:
    np.savez(tmp, **arrays)
  return path


def copy_file(src: str, dst: str) -> str:
  with atomic_path(dst) as tmp:
    shutil.copyfile(src, tmp)
  return dst


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(chunk), b''):
      digest.update(block)
  return digest.hexdigest()
