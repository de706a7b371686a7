"""Seeded comparison studies: every variant of a study, same data, steps and batch.

  python launch/study.py --study=sddit --out=DIR                # 13 variants x 3 seeds, CPU
  python launch/study.py --study=diffdis --out=DIR --seeds=1 --only=diffdis,clip_style
  python launch/study.py --study=sddit --out=DIR --scale=gpu    # a larger digits setting
  python launch/study.py --study=sddit_fmnist --out=DIR --budget=flops --only=dit,maskdit,sddit

Variants, scales and the order overrides apply in: configs/study.py. Each run trains in this
process through the Trainer into DIR/<study>/<variant>/seed<k>/ and is scored at the
--eval_at step counts (diffdis_jax/study/run.py says how); after every run
DIR/<study>/results.json and DIR/<study>/table.md are rewritten from all finished runs.
Rerunning the same command skips finished runs and resumes a partial one. Bad input stops with
one line on stderr and exit status 2, before anything is compiled or written. docs/study.md
has the details.
"""
from __future__ import annotations

import os
import shlex
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from configs import study as study_configs  # noqa: E402
from diffdis_jax.study import plan  # noqa: E402

_STUDY = flags.DEFINE_enum('study', None, list(study_configs.STUDIES), 'Which study to run.')
_OUT = flags.DEFINE_string('out', None, 'Output folder; runs go to OUT/<study>/<variant>/'
                           'seed<k>/. New, empty, or written by this script before.')
_SEEDS = flags.DEFINE_integer('seeds', 3, 'Seeds per variant: 0 .. seeds-1.')
_STEPS = flags.DEFINE_integer('steps', None, 'Training steps of every run (default: the '
                              "scale's budget).")
_SCALE = flags.DEFINE_enum('scale', 'cpu', list(study_configs.SCALES),
                           'cpu: the demo configs; gpu: larger settings; finetune: '
                           'every variant from a pretrained generator (diffdis_fmnist).')
_ONLY = flags.DEFINE_string('only', '', 'Comma-separated variant names (default: all).')
_EVAL_AT = flags.DEFINE_string('eval_at', '', 'Comma-separated step counts at which metrics '
                               "are taken; --steps is always one (default: the scale's).")
_SAMPLES = flags.DEFINE_integer('samples', None, 'Samples per generation metric (default: '
                                "the scale's; fd_digits depends on it).")
_SET = flags.DEFINE_multi_string('set', [], 'FIELD=VALUE override of the shared base config, '
                                 'applied before each variant\'s own; repeatable.')
_FAST_COMPILE = flags.DEFINE_bool('fast_compile', False, 'Compile train steps at XLA\'s '
                                  'lowest optimisation level (smoke runs: faster compiles, '
                                  'slower steps).')
_COMPILE_CACHE = flags.DEFINE_string('compile_cache', None, 'JAX persistent compilation cache '
                                     '(default OUT/compile_cache; "" for none): the seeds of a '
                                     'variant and the stages of a run share compiles.')
_BUDGET = flags.DEFINE_enum('budget', 'steps', list(plan.BUDGETS),
                            'What the variants share: steps (the same --steps each) or flops '
                            '(the training FLOPs of the reference variant\'s --steps: a cheaper '
                            'variant trains longer and is scored at the same compute marks).')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Check everything, print the runs, stop.')


def fail(message: str):
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    fail(str(e).splitlines()[0])


def _command() -> str:
  return ' '.join(['python', os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)] +
                  [shlex.quote(a) for a in sys.argv[1:]])


def main(argv):
  if len(argv) > 1:
    fail(f'unexpected arguments {argv[1:]}; every option is a --flag')
  if _STUDY.value is None or not _OUT.value:
    fail('--study and --out are required, e.g. --study=sddit --out=/tmp/study')
  study = study_configs.STUDIES[_STUDY.value]
  try:
    settings, variants = plan.check_flags(
        study, _SCALE.value, _ONLY.value, _SEEDS.value, _STEPS.value, _EVAL_AT.value,
        _SAMPLES.value, _SET.value, _FAST_COMPILE.value, _BUDGET.value)
    plan.check_out(_OUT.value, settings)
    runs = plan.plan(study, settings, variants, _SEEDS.value, _OUT.value)
  except plan.StudyError as e:
    fail(str(e))

  cache = (os.path.join(os.path.abspath(_OUT.value), 'compile_cache')
           if _COMPILE_CACHE.value is None else _COMPILE_CACHE.value)
  if cache:
    jax.config.update('jax_compilation_cache_dir', cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  try:
    plan.check_runs(runs, jax.device_count())
  except plan.StudyError as e:
    fail(str(e))
  marks = list(settings.eval_at)
  budget = (f'{settings.steps} steps, scored at steps {marks}' if settings.budget == 'steps'
            else f'the training FLOPs of {settings.steps} {study.reference} steps, scored at '
                 f'the FLOPs of its steps {marks}')
  print(f'{settings.study} study, scale {settings.scale}: {len(runs)} runs of {budget}',
        flush=True)
  if settings.budget == 'flops':
    print('each variant\'s own steps at those marks:', flush=True)
    for name, steps in dict((run.variant.name, run.eval_at) for run in runs).items():
      print(f'  {name}: {list(steps)}', flush=True)
  if _DRY_RUN.value:
    for run in runs:
      print(f'  {run.name} -> {run.workdir}')
    return

  # pylint: disable=g-import-not-at-top
  # TensorFlow (clu's writers, in the Trainer): after the checks, whose answer is one line
  from diffdis_jax.study import report, run as run_lib
  from diffdis_jax.train import preemption
  study_dir = plan.save_settings(_OUT.value, settings)
  caches = os.path.join(os.path.abspath(_OUT.value), 'caches')
  say = lambda line: print(line, flush=True)
  logging.set_verbosity(logging.WARNING)  # the per-run lines below say what happens
  with preemption.sigterm_requests_stop():  # SIGTERM: save the current step, report, exit 0
    for run in runs:
      try:
        status = run_lib.run_one(run, settings, caches, say)
      except plan.StudyError as e:
        fail(str(e))
      if status == 'stopped':
        break
      if status == 'done':
        report.write_report(study, study_dir, settings.to_json(), _command())
  results = report.write_report(study, study_dir, settings.to_json(), _command())
  print(f'{len(results["variants"])} variants reported: '
        f'{os.path.join(study_dir, "table.md")}, {os.path.join(study_dir, "results.json")}')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
