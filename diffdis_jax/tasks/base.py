"""The Task: everything a run mode needs to know about one method, behind one interface.

A method is one `Task` subclass (tasks/sddit, tasks/diffdis), registered by name in
tasks/__init__.py: the only place outside its own package where a method is named. The
Trainer (train/) and the run modes (modes/) reach the model, the objective, the data, the
config checks, the previews and the evaluations only through these methods, so they hold no
branch on the method.

Built cheaply: `Task(config, workdir)` stores its arguments and loads nothing; what is costly
(pretrained weights, a text encoder's pre-stage) is loaded on first use.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Optional

import jax
import jax.numpy as jnp

from diffdis_jax import weights
from diffdis_jax.core.checks import check
from diffdis_jax.core.dtypes import resolve_compute_dtype

# the dtypes config.compute_dtype names; 'auto' resolves to one of them (core/dtypes.py)
COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
# the modes every task serves; `modes` of a task adds those it implements
TRAIN_AND_GRID = ('train', 'grid')


def latent_scale(config, vae_path: str) -> float:
  """data.latent_scale, or with 0 the scaling_factor in the config.json of the VAE at
  `vae_path` (the VAE that made the latents)."""
  return config.data.latent_scale or float(weights.vae_config(vae_path)['scaling_factor'])


def compute_dtype(config):
  """The activations' and matmuls' dtype that `config.compute_dtype` names, with 'auto'
  resolved for the target platform (core/dtypes.py)."""
  return COMPUTE_DTYPES[resolve_compute_dtype(config.compute_dtype)[0]]


class Task(abc.ABC):
  """One method. Subclasses set `name`, `objective` and `modes`, and implement the abstract
  methods; the others have the defaults a method without that part needs."""

  name: ClassVar[str]                # the config's `method`
  objective: ClassVar[Any]           # its objectives/ module (init_aux, loss_fn, update_aux)
  modes: ClassVar[tuple[str, ...]] = TRAIN_AND_GRID   # the run modes it serves

  def __init__(self, config, workdir: Optional[str] = None):
    self.config, self.workdir = config, workdir

  # ------------------------------------------------------------------ checks (nothing built)

  @abc.abstractmethod
  def check_config(self):
    """Raise ConfigError on the first problem of the method's own fields (model, objective,
    data, pretrained weights), reading at most file headers: nothing is loaded or compiled."""

  def check_mode(self, mode: str, workdir: str, num_devices: Optional[int]):
    """Raise ConfigError when `mode` cannot run: a mode the method does not serve, or a file
    or size the mode needs (checkpoint, reference statistics, sampling batch)."""
    del workdir, num_devices
    check(mode in self.modes, f'--mode={mode} is not available for method={self.name}; '
                              f'it serves {", ".join(self.modes)}')

  # ------------------------------------------------------------------ model and state

  @abc.abstractmethod
  def build_model(self):
    """The flax module the config describes."""

  @abc.abstractmethod
  def init_params(self, model, rng):
    """Boxed parameters (traced inside the state's init, never run eagerly)."""

  def final_phase_config(self):
    """The config of the last `final_phase.fraction` of training, which trains at
    `final_phase.lr`: by default the run's own; a method may change more (SD-DiT: no mask)."""
    return self.config

  def finish_init(self, state, shardings):
    """The fresh state with host-side values `init` cannot trace (pretrained weights, the
    empty prompt's embedding), placed with `shardings`."""
    return jax.device_put(state, shardings)

  # ------------------------------------------------------------------ data

  @abc.abstractmethod
  def abstract_batch(self, batch_sharding) -> dict:
    """ShapeDtypeStructs of one global batch, as the train step receives it."""

  @abc.abstractmethod
  def train_iterator(self, process_index: int, process_count: int):
    """This host's checkpointable iterator of its rows of each global batch (numpy)."""

  def prepare_batch(self, batch, step: int):
    """The step's batch from the sharded host batch (e.g. frozen encoders run on it)."""
    del step
    return batch

  def input_metrics(self, data_iterator) -> dict:
    """{name: scalar} about the input so far, logged with the step metrics."""
    del data_iterator
    return {}

  # ------------------------------------------------------------------ previews, evaluation

  @abc.abstractmethod
  def make_preview_fn(self, model) -> Callable:
    """The jitted sampler that `preview` and `final_eval` use."""

  @abc.abstractmethod
  def preview(self, preview_fn, params):
    """The periodic sample grid, uint8 (h, w, c), or None when there is nothing to show."""

  def final_eval(self, preview_fn, params) -> dict:
    """{name: scalar} of the EMA params at the end of training, written to metrics.jsonl."""
    del preview_fn, params
    return {}

  def train_flops_per_image(self, model) -> Optional[float]:
    """Analytic model FLOPs of one training image (forward and backward), the unit of
    equal-compute comparisons; None where the method has no analytic count."""
    del model
    return None

  def eval_hooks(self, model, mesh) -> list:
    """Callables (step, ema_params, writer, jsonl) the loop runs after every step; each
    decides when it evaluates."""
    del model, mesh
    return []

  # ------------------------------------------------------------------ run modes

  def samples_without_checkpoint(self) -> bool:
    """Whether --mode=sample in a workdir without a checkpoint samples the fresh state, i.e.
    pretrained weights that `finish_init` loads as they are (SD-DiT: DiT's released ones)."""
    return False

  def write_samples(self, model, mesh, state) -> str:
    """--mode=sample: samples of the state's EMA params to a file; returns its path."""
    raise NotImplementedError(f'method={self.name} has no --mode=sample')

  def export(self, model, state) -> str:
    """--mode=export: the state's EMA params written in a peer's format; returns the path."""
    raise NotImplementedError(f'method={self.name} has no --mode=export')

  def evaluate(self, model, mesh, latest_state: Callable[[], Any]) -> dict:
    """--mode=eval: scores written to <workdir>/eval.json; returns them. `latest_state()`
    restores the newest checkpoint, for methods whose evaluation reads one."""
    raise NotImplementedError(f'method={self.name} has no --mode=eval')
