"""`--mode=eval` for method=diffdis: the zero-shot suite and image-text retrieval of the latest
checkpoint's EMA parameters, written to <workdir>/eval.json (sections 'zeroshot', 'retrieval').

    check_eval_inputs(config, workdir)   one ConfigError line per problem, before any compile
    eval_mode(config, workdir, trainer)  restore, DiffDisTask.zeroshot_functions, the suite

What is measured and how is described in docs/evaluation.md ("Zero-shot suite (DiffDis)").
"""
from __future__ import annotations

import logging
import os


def check_eval_inputs(config, workdir: str):
  """Something to evaluate, every named input present, a checkpoint to evaluate."""
  # pylint: disable=g-import-not-at-top
  from diffdis_jax.validate_diffdis import check_shards
  from diffdis_jax.eval import zeroshot_suite as suite
  from diffdis_jax.validate import ConfigError, _check
  e, d, m = config.eval, config.diffdis, config.model
  specs = suite.load_specs()
  try:
    datasets = suite.parse_datasets(e.zeroshot_datasets, specs)
  except ValueError as err:
    raise ConfigError(f'eval.zeroshot_datasets: {err}') from None
  _check(bool(datasets or e.retrieval_shards),
         'nothing to evaluate: name zero-shot datasets with --config.eval.zeroshot_datasets='
         'cifar10,dtd,... (or all) and/or image-text shards with '
         '--config.eval.retrieval_shards=GLOB')
  _check(d.align_mode != 'none', "diffdis.align_mode='none' has no text head: it cannot "
                                 'classify or retrieve; evaluate a diffusion or contrastive run')
  _check(d.zeroshot.batch >= 1 and d.zeroshot.seeds >= 1,
         'diffdis.zeroshot.batch and diffdis.zeroshot.seeds must be >= 1')
  for field in ('zeroshot_max_images', 'retrieval_max_pairs'):
    _check(isinstance(e[field], int) and e[field] >= 0,
           f'eval.{field} must be an integer >= 0 (0: all), got {e[field]!r}')
  if datasets:
    folder = e.tfds_data_dir
    _check(bool(folder) and os.path.isdir(folder),
           f'eval.tfds_data_dir={folder!r} is not a directory; pass --config.eval.tfds_data_dir='
           'DIR holding the prepared tfds datasets (nothing is downloaded)')
    ready = [n for n in datasets if suite.prepared_dir(specs[n]['tfds'], folder)]
    # a partly prepared suite runs (the rest is recorded as skipped); none at all is a mistake
    _check(bool(ready or e.retrieval_shards),
           f'none of {datasets} is prepared under eval.tfds_data_dir={folder!r} (tfds names: '
           f'{[specs[n]["tfds"] for n in datasets]}); prepare them there or pass another DIR')
  if e.retrieval_shards:
    check_shards(e.retrieval_shards, 'eval.retrieval_shards',
                 f'eval.retrieval_shards={e.retrieval_shards!r} matches no file; pass '
                 '--config.eval.retrieval_shards=GLOB of image-text shards (*.tar, '
                 '*.tfrecord*, *.array_record*)')
  if m.in_channels not in (1, 3):
    _check(bool(config.init.sd_folder), f'model.in_channels={m.in_channels}: latent models '
                                        'read images through the SD VAE; pass '
                                        '--config.init.sd_folder=DIR')
  steps = os.path.join(workdir, 'checkpoints')
  _check(os.path.isdir(steps) and any(n.isdigit() for n in os.listdir(steps)),
         f'no checkpoint under {steps}: train first, or pass the --workdir of a trained run')


def eval_mode(config, workdir: str, trainer=None) -> dict:
  """The latest checkpoint's EMA params through the suite; returns the eval.json sections."""
  # pylint: disable=g-import-not-at-top
  from diffdis_jax.eval import zeroshot_suite as suite
  from diffdis_jax.eval.evaluate import restore_train_state
  from diffdis_jax.train import checkpoint as ckpt_lib
  from diffdis_jax.train.loop import Trainer
  trainer = trainer or Trainer(config, workdir)
  checkpointer = ckpt_lib.Checkpointer(workdir, max_to_keep=config.keep_checkpoints)
  if checkpointer.latest_step() is None:
    raise FileNotFoundError(f'no checkpoint under {checkpointer.directory}: train first')
  state = restore_train_state(trainer, checkpointer)
  checkpointer.close()
  fns = trainer.task.zeroshot_functions(trainer.mesh)
  settings = dict(fns.settings, checkpoint_step=int(state.step), method=config.method,
                  workdir=os.path.abspath(workdir))
  sections = suite.evaluate_diffdis(fns.predict, fns.encode, state.ema_params, config, workdir,
                                    fns.image_size, settings)
  logging.info('eval: %s -> %s', sorted(sections), os.path.join(workdir, 'eval.json'))
  return sections
