"""Orbax checkpoints of the train state and the input iterator, and parameter fingerprints."""
from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
# orbax's own clean-up of unfinished saves, which its CheckpointManager runs only at start-up
from orbax.checkpoint._src.path import temporary_paths

from diffdis_jax.core import files
from diffdis_jax.train.workdir import WorkdirMismatch


class NonFiniteState(FloatingPointError):
  pass


@jax.jit
def _all_finite(tree):
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


class Checkpointer:
  """Async orbax saves under <workdir>/checkpoints/<step>/{state,data}.

  Restoring takes an abstract state whose leaves carry the target shardings, so a checkpoint
  written on one mesh restores onto another. `restore_latest` skips checkpoints that cannot be
  read back (see docs/reliability.md).

  A save that fails for lack of space raises `files.DiskFull` naming its step, whether it
  fails at once or in orbax's background threads (then at the next save, `wait` or
  `close`); its unfinished folder is removed at once, so the space it took is free again.

  `read_only=True` reads another run's checkpoints (a pretrained start) and never changes its
  folder: no folder is created, no unfinished save is cleaned up (that run may be writing
  it), nothing is saved, and a checkpoint that does not read back is skipped, not set aside.
  Its `restore` takes the names of the state's top-level parts to read (e.g. ('params',
  'ema_params')) instead of an abstract state, and returns them as host numpy trees in the
  layout they were saved in, whatever the mesh or model of that run.
  """

  def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    _write_replicas_in_parallel(None if jax.process_count() > 1 else False)
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, 'checkpoints')
    self.read_only = read_only
    self._pending = None  # (step, bytes) of the save started last, until it is known complete
    self._closed = False
    if read_only:
      # parts of a state whose structure this run does not know: orbax's PyTree handler reads
      # a subset of the saved tree (the standard one needs the whole structure)
      self.manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(
              read_only=True, create=False, cleanup_tmp_directories=False, max_to_keep=None,
              save_interval_steps=0, enable_async_checkpointing=False),
          item_handlers={'state': ocp.PyTreeCheckpointHandler()})
      return
    # a save cut short by a kill leaves <step>.orbax-checkpoint-tmp-*: never a checkpoint
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True,
            cleanup_tmp_directories=True),
        item_names=('state', 'data'))

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return list(self.manager.all_steps())

  def save(self, step: int, state, data_iterator, *, force: bool = False) -> bool:
    """Starts an async save; a state holding NaN or Inf is refused (NonFiniteState)."""
    if self.read_only:
      raise PermissionError(f'{self.directory} is open read-only: it belongs to another run')
    if not bool(_all_finite(state)):
      self.close()  # earlier saves complete
      raise NonFiniteState(f'the state at step {step} holds NaN or Inf: not saved; the last '
                           'checkpoint is the newest finite state (see config.nonfinite)')
    self.wait()  # a failed earlier save is reported as that step's, not as this one's
    self._pending = (step, sum(x.nbytes for x in jax.tree.leaves(state)))
    with self._reporting_disk_full():
      return self.manager.save(
          step, force=force,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  data=grain.checkpoint.CheckpointSave(data_iterator)))

  @contextlib.contextmanager
  def _reporting_disk_full(self):
    """A full disk under the pending save (orbax and tensorstore raise it as ValueError or
    OSError, from whichever thread met it) as `DiskFull` naming that save's step."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      if self._pending is None or not files.is_disk_full(e):
        raise
      step, needed = self._pending
      self._pending = None
      self._remove_unfinished()
      raise files.DiskFull(f'checkpoint step {step}', os.path.join(self.directory, str(step)),
                           needed) from e

  def _remove_unfinished(self):
    """Deletes the <step>.orbax-checkpoint-tmp* folders of saves that did not complete
    (process 0 only); orbax never lists them as checkpoints either way."""
    with contextlib.suppress(Exception):  # only space is at stake; a restart retries it
      asyncio.run(temporary_paths.cleanup_temporary_paths(self.directory))

  def restore(self, step: int, abstract_state, data_iterator=None):
    """The state at `step`; `data_iterator`, when given, is moved to where it was then.

    Without an iterator only the state is read (sampling and evaluation need no input
    position), so any number of processes can read a checkpoint of any other number. With
    one: grain writes one iterator file per process (process_I-of-N.json); a run resumed with
    another number of processes finds no file of its own and takes the position from any
    process's file, which is valid because every host's iterator counts global batches (see
    data/pipeline.py: host p reads its rows of global batch k at local index k).
    Read-only: `abstract_state` names the parts to read (see the class).
    """
    logging.info('restoring step %d from %s', step, self.directory)
    if self.read_only:
      return self._restore_parts(step, tuple(abstract_state))
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    foreign = None if data_iterator is None else self._foreign_data_state(step)
    if data_iterator is not None and foreign is None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    if foreign is not None:
      logging.warning('checkpoint step %d was written by %s processes, this run has %d: the '
                      'input position is taken from %s', step, foreign[0], jax.process_count(),
                      foreign[1])
      data_iterator.set_state(foreign[2])
    return restored['state']

  def _restore_parts(self, step: int, parts: tuple) -> dict:
    """{part: host numpy tree} of the state saved at `step`, as it was saved."""
    saved = self.manager.item_metadata(step)['state']
    saved = getattr(saved, 'tree', saved)
    missing = [p for p in parts if p not in saved]
    if missing:
      raise KeyError(f'the state saved at step {step} has no {missing}')
    target = {p: jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), saved[p])
              for p in parts}
    as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), target)
    restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=as_numpy, partial_restore=True)))
    return dict(restored['state'])

  def _foreign_data_state(self, step: int):
    """(process count, file, iterator state) from another process layout's iterator file, or
    None when this process's own file is there (or none is: orbax then reports it)."""
    folder = os.path.join(self.directory, str(step), 'data')
    own = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
    if not os.path.isdir(folder) or os.path.exists(os.path.join(folder, own)):
      return None
    files = sorted(f for f in os.listdir(folder) if re.fullmatch(r'process_\d+-of-\d+\.json', f))
    if not files:
      return None
    with open(os.path.join(folder, files[0])) as f:
      state = json.load(f)
    return files[0].split('-of-')[1].removesuffix('.json'), files[0], state

  def restore_latest(self, abstract_state, data_iterator=None, *, required: bool = False):
    """The newest checkpoint that reads back intact; None when there is none, or, when
    `required`, a FileNotFoundError that says to train first.

    A checkpoint that fails to restore, or whose parameters do not hash to the fingerprint
    logged when it was saved, is moved to <workdir>/checkpoints_corrupt/ with a warning naming
    its step, and the next older one is tried. Intact checkpoints are never touched.
    `data_iterator` as in `restore`.
    """
    logged = logged_fingerprints(self.workdir)
    steps = sorted(self.all_steps(), reverse=True)
    initial_position = (data_iterator.get_state() if steps and data_iterator is not None
                        else None)
    for step in steps:
      misfit = self._misfit(step, abstract_state)
      if misfit:  # another model's checkpoint is not broken: refuse, touch nothing
        raise WorkdirMismatch(
            f'checkpoint step {step} in {self.directory} was written for another model: '
            f'{misfit}; use another --workdir or the config it was written with (its '
            'config.json)')
      state, problem = None, None
      try:
        state = self.restore(step, abstract_state, data_iterator)
      except Exception as e:  # pylint: disable=broad-except
        # orbax and tensorstore raise ValueError, KeyError, FileNotFoundError, ... for a
        # truncated or incomplete checkpoint
        problem = f'{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}'[:300]
      # a file one host could not read makes every host fall back; process 0's log decides
      # whether to compare fingerprints (other hosts may not see it), all hosts hash together
      failed = _any_host(problem is not None)
      if not failed and _lead_says(step in logged):
        params = state['params'] if isinstance(state, dict) else state.params
        failed = _lead_says(params_fingerprint(params) != logged.get(step))
        problem = 'its parameters do not match the fingerprint logged when it was saved'
      if not failed:
        return state
      self._set_aside(step, problem or 'another process could not restore it')
    if initial_position is not None:  # a failed restore may have moved the iterator
      data_iterator.set_state(initial_position)
    if required:
      raise FileNotFoundError(f'no checkpoint under {self.directory}: train first, or pass '
                              'the --workdir of a trained run')
    return None

  def _misfit(self, step: int, abstract_state) -> str | None:
    """How the parameters saved at `step` differ in names or shapes from those of
    `abstract_state`, or None. None too when the saved metadata cannot be read: the restore
    then fails, and the step counts as broken."""
    params = getattr(abstract_state, 'params', None)
    try:
      with ocp.PyTreeCheckpointer() as reader:
        saved = reader.metadata(os.path.join(self.directory, str(step), 'state'))
      saved = saved.item_metadata.tree['params']
    except Exception:  # pylint: disable=broad-except
      return None
    if params is None:
      return None
    theirs, ours = _shapes(saved), _shapes(params)
    diff = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
    if not diff:
      return None
    shown = '; '.join(f'{k} is {theirs.get(k, "absent")} there, {ours.get(k, "absent")} here'
                      for k in diff[:3])
    return f'{len(diff)} of its parameters differ ({shown}{"; ..." if len(diff) > 3 else ""})'

  def _set_aside(self, step: int, problem: str):
    """Move a broken step out of orbax's directory (later saves of that step must not collide
    with it, and orbax must not count it) instead of deleting it: a person may want it.
    Read-only, the step stays where it is and is only skipped."""
    if self.read_only:
      logging.warning('checkpoint step %d in %s cannot be restored (%s); read-only, it is left '
                      'in place and the newest older checkpoint is tried', step,
                      self.directory, problem)
      return
    aside = os.path.join(self.workdir, 'checkpoints_corrupt')
    target = os.path.join(aside, f'{step}.{int(time.time())}')
    logging.warning('checkpoint step %d in %s cannot be restored (%s); moved to %s, falling '
                    'back to the newest older checkpoint', step, self.directory, problem, target)
    if jax.process_index() == 0:
      os.makedirs(aside, exist_ok=True)
      os.rename(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'checkpoint {step} set aside')
    self.manager.reload()

  def wait(self):
    with self._reporting_disk_full():
      self.manager.wait_until_finished()
    self._pending = None

  def close(self):
    """Waits for the save in flight and ends orbax's threads; once (later calls return)."""
    if self._closed:
      return
    self._closed = True
    try:
      self.wait()
    finally:
      self.manager.close()

  def close_after_error(self) -> Exception | None:
    """For a run ending on an error: a save still in flight completes (another fault must not
    cost the checkpoint being written) and orbax's threads end. A failure of that save is
    logged and returned, not raised: the caller decides which error to report."""
    try:
      self.close()
    except Exception as e:  # pylint: disable=broad-except
      logging.warning('the checkpoint save in flight did not complete either: %s',
                      str(e).splitlines()[0] if str(e) else type(e).__name__)
      return e
    return None

  @contextlib.contextmanager
  def closing_on_error(self):
    """Closes the checkpointer when the block raises (`close_after_error`) and re-raises. On
    a full disk a save in flight may have taken the space another write of the block then
    missed (a sample grid that would fit once the unfinished save is removed): the save
    that failed too is the fault reported, with the space it needs."""
    try:
      yield
    except BaseException as error:
      save_error = self.close_after_error()
      if isinstance(save_error, files.DiskFull) and files.is_disk_full(error):
        raise save_error from error
      raise


def complete_steps(workdir: str) -> list[int]:
  """The steps orbax lists as checkpoints in <workdir>/checkpoints, oldest first; a save that
  did not complete keeps its temporary folder name and is not among them."""
  folder = os.path.join(workdir, 'checkpoints')
  names = os.listdir(folder) if os.path.isdir(folder) else []
  return sorted(int(n) for n in names if n.isdigit())


def _write_replicas_in_parallel(enabled: bool | None):
  """orbax's handler for jax.Array (its registry is process-wide), with or without its
  replica-parallel writes.

  Replica-parallel splits each replicated array between the replicas that hold it, so that
  several hosts share its writing. It slices every array on every device with a jit'd slice,
  one compile per shape and device at a process's first save: 336 compiles and 17 s for the
  tiny DiffDis state on 8 CPU devices, where one process writes every byte anyway. With
  several processes, `enabled=None` keeps orbax's own choice (on, except on GPUs).
  """
  # as orbax registers its default handler, metadata store included (not exported publicly)
  from orbax.checkpoint._src.metadata import array_metadata_store  # pylint: disable=g-import-not-at-top
  handler = ocp.type_handlers.ArrayHandler(use_replica_parallel=enabled,
                                           array_metadata_store=array_metadata_store.Store())
  ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


def abstract_with_shardings(abstract_state, shardings):
  """ShapeDtypeStructs that carry the shardings a restored state should have."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, shardings)


def _shapes(tree) -> dict[str, tuple]:
  """'path.to.leaf' -> shape of every array-like leaf."""
  return {jax.tree_util.keystr(path, simple=True, separator='.'): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
          if hasattr(leaf, 'shape')}


def _lead_says(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(multihost_utils.broadcast_one_to_all(np.int32(flag)))


def _any_host(flag: bool) -> bool:
  if jax.process_count() == 1:
    return flag
  return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def logged_fingerprints(workdir: str) -> dict[int, str]:
  """step -> params_fingerprint, as logged in <workdir>/metrics.jsonl at each save."""
  path = os.path.join(workdir, 'metrics.jsonl')
  out = {}
  if not os.path.exists(path):
    return out
  with open(path) as f:
    for line in f:
      try:
        record = json.loads(line)
      except ValueError:
        continue  # a line cut short by a kill
      if isinstance(record, dict) and 'params_fingerprint' in record:
        out[int(record['step'])] = record['params_fingerprint']
  return out


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
