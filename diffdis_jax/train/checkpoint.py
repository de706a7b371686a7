"""Orbax checkpoints of the train state and the input iterator, and parameter fingerprints."""
from __future__ import annotations

import hashlib
import logging
import os

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils


class Checkpointer:
  """Async orbax saves under <workdir>/checkpoints/<step>/{state,data}.

  Restoring takes an abstract state whose leaves carry the target shardings, so a checkpoint
  written on one mesh restores onto another.
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True),
        item_names=('state', 'data'))

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator, *, force: bool = False) -> bool:
    return self.manager.save(
        step, force=force,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                data=grain.checkpoint.CheckpointSave(data_iterator)))

  def restore(self, step: int, abstract_state, data_iterator):
    """The state at `step`; `data_iterator` is moved to where it was at that step."""
    logging.info('restoring step %d from %s', step, self.directory)
    restored = self.manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                      data=grain.checkpoint.CheckpointRestore(data_iterator)))
    return restored['state']

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(abstract_state, shardings):
  """ShapeDtypeStructs that carry the shardings a restored state should have."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, shardings)


def _host_value(x) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def params_fingerprint(params) -> str:
  """sha256 over every parameter's path, shape, dtype and bytes, leaves sorted by path."""
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  digest = hashlib.sha256()
  for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
    value = np.ascontiguousarray(_host_value(leaf))
    digest.update(jax.tree_util.keystr(path).encode())
    digest.update(f'{value.shape}{value.dtype}'.encode())
    digest.update(value.tobytes())
  return digest.hexdigest()
