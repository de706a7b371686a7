"""Entry point: python launch/main.py --config=configs/NAME.py --workdir=DIR [--mode=...]

Modes (diffdis_jax/modes/run.py): train (default; resumes from the workdir's checkpoints),
sample (sample.num_samples images of the latest checkpoint's EMA parameters to an ADM-format
.npz), eval (FID, sFID, IS, precision, recall of that file to <workdir>/eval.json; for
DiffDis, zero-shot accuracy and retrieval recall of the latest checkpoint; see
docs/evaluation.md), grid (the preview grid of the latest checkpoint's EMA parameters),
export (a DiT's EMA parameters as a diffusers DiTTransformer2DModel folder, docs/weights.md),
extract_latents (ImageNet -> SD-VAE latents written into the workdir, see docs/data.md). Any
config field can be overridden as --config.FIELD=VALUE. Bad input stops with one line on
stderr and exit status 2, before anything is compiled or written. A fault during the run (a
full disk, an unreadable input record, a non-finite loss with nonfinite=stop) stops it with
one line and exit status 1; what was written before stays (docs/reliability.md).
"""
from __future__ import annotations

import gc
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Path to a configs/*.py file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples.')
_MODE = flags.DEFINE_enum('mode', 'train',
                          ['train', 'sample', 'eval', 'grid', 'export', 'extract_latents'],
                          'What to run.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for multi-process runs on GPU '
    'clusters (TPU pods detect it).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Index of this process.')


class _QuietLibraries:
  """Drops INFO lines from orbax and grain (dozens per checkpoint); warnings still show.

  Also drops the reports, with tracebacks, that orbax's threads and asyncio log of a write
  that failed for lack of space: the same error reaches the main thread, which reports it in
  one line.
  """

  def filter(self, record) -> bool:
    if record.exc_info and record.exc_info[1] is not None:
      from diffdis_jax.core import files  # pylint: disable=g-import-not-at-top
      if files.is_disk_full(record.exc_info[1]):
        return False
    return record.levelno >= 30 or not any(
        part in record.pathname for part in ('/orbax/', '/grain/', '/etils/'))


def fail(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def _config_path(argv) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def parse_flags(argv):
  """absl flag parsing with every failure reported as a single line."""
  path = _config_path(argv)
  if path is not None and not os.path.isfile(path.split(':', 1)[0]):
    fail(f'config file {path!r} not found; pass --config=configs/<name>.py '
         f'(one of: {", ".join(sorted(_known_configs()))})')
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0])
  except (KeyError, AttributeError) as e:
    name = str(e.args[0] if e.args else e).strip('\'"')
    culprit = next((a.split('=', 1)[0] for a in argv
                    if a.startswith('--config.') and f'.{name}' in a.split('=', 1)[0]),
                   f'--config...{name}')
    fail(f'unknown config field in {culprit}: {path} has no field {name!r} '
         '(the shared fields are listed in configs/common.py)')
  except Exception as e:  # pylint: disable=broad-except
    # config files are Python: surface their own errors in one line too
    fail(f'bad --config: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}')


def _fault_line(error: BaseException, mode: str, workdir: str) -> str | None:
  """The one line for a fault of the run that no input check could foresee (a full disk, an
  input record that cannot be read), or None when `error` is not one: a bug, whose traceback
  is what helps then."""
  # pylint: disable=g-import-not-at-top
  from diffdis_jax.core import checks, files
  from diffdis_jax.data.pipeline import UnreadableRecord
  full = files.find_disk_full(error, workdir)
  unreadable = checks.find_cause(error, UnreadableRecord)
  if full is not None:
    fault = f'{full.describe()}; nothing written before is lost; free space and '
  elif unreadable is not None:
    fault = f'{unreadable}; then '
  else:
    return None
  return fault + _rerun(mode, workdir)


def _rerun(mode: str, workdir: str) -> str:
  """What running the same command again does: for training, the checkpoint it resumes from."""
  from diffdis_jax.train.checkpoint import complete_steps  # pylint: disable=g-import-not-at-top
  if mode == 'extract_latents':
    return 'run the same command again: it keeps the complete shards and writes the rest'
  steps = complete_steps(workdir)
  newest = steps and (f'checkpoint step {steps[-1]} '
                      f'({os.path.join(workdir, "checkpoints", str(steps[-1]))})')
  if mode != 'train':
    return 'run the same command again' + (f' ({newest} is intact)' if newest else '')
  if newest:
    return f'run the same command again: it resumes from {newest}'
  return 'run the same command again: no checkpoint was complete, it starts from step 0'


def _known_configs():
  folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')
  return [f'configs/{f}' for f in os.listdir(folder)
          if f.endswith('.py') and f not in ('__init__.py', 'common.py')
          and not f.endswith('_common.py')]


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top
  import jax
  from diffdis_jax.core import files
  from diffdis_jax.core.checks import ConfigError
  from diffdis_jax.modes.checks import check_run
  from diffdis_jax.parallel import distributed

  # jax's start-up chatter would bury a one-line answer to bad input: INFO logs resume once
  # the config is known to be good
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  if config is None:
    fail('--config is required, e.g. --config=configs/demo.py')
  if not _WORKDIR.value:
    fail('--workdir is required, e.g. --workdir=/tmp/demo')
  distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  try:
    check_run(config, _MODE.value, _WORKDIR.value, jax.device_count())
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_QuietLibraries())
    files.quiet_abandoned_writes()
    logging.info('%s', distributed.describe())
    logging.info('config:\n%s', config)
    from diffdis_jax.modes.run import run  # TensorFlow (clu's writers): after the checks
    # bad input found while building (a width the mesh does not divide) is still one line
    run(_MODE.value, config, _WORKDIR.value)
  except ConfigError as e:
    fail(str(e))
  except FloatingPointError as e:  # nonfinite=stop, or a non-finite state at a save
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  except Exception as e:  # pylint: disable=broad-except
    line = _fault_line(e, _MODE.value, os.path.abspath(_WORKDIR.value))
    if line is None:
      raise
    disk_full = line.startswith('disk full')
  else:
    return
  if disk_full:
    # a failed async save's coroutines are finalised now, while the modules they need are
    # still loaded: at interpreter exit each would print a traceback
    gc.collect()
  print(f'error: {line}', file=sys.stderr)
  sys.exit(1)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
