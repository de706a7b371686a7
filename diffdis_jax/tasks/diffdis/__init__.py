"""DiffDis's task: model builder, config checks, data sources, frozen text encoders, previews
and evaluations."""
from diffdis_jax.tasks.diffdis.task import DiffDisTask

__all__ = ['DiffDisTask']
