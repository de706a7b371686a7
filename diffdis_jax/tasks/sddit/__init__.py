"""SD-DiT's task: the model builder, config checks, data, previews and evaluations."""
from diffdis_jax.tasks.sddit.task import SDDiTTask

__all__ = ['SDDiTTask']
