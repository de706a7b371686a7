"""One Task per method (tasks/base.py says what a task provides), registered here by name."""
from __future__ import annotations

from typing import Optional

from diffdis_jax.core.checks import ConfigError
from diffdis_jax.tasks.autoencoder import AutoencoderTask
from diffdis_jax.tasks.base import Task
from diffdis_jax.tasks.diffdis import DiffDisTask
from diffdis_jax.tasks.sddit import SDDiTTask

TASKS: dict[str, type[Task]] = {task.name: task for task in (SDDiTTask, DiffDisTask,
                                                              AutoencoderTask)}


def task_class(method: str) -> type[Task]:
  try:
    return TASKS[method]
  except KeyError:
    raise ConfigError(f'method={method!r} is not one of {sorted(TASKS)}; pass '
                      '--config.method=<one of them>') from None


def make_task(config, workdir: Optional[str] = None) -> Task:
  return task_class(config.method)(config, workdir)
