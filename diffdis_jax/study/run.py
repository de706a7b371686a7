"""One run of a study (a variant at a seed) through the Trainer, scored at each of its steps.

The run trains to the first evaluation step with `Trainer.train(stop_at=k)` (which saves a
checkpoint there), is scored, and continues from that checkpoint to the next step, and so
on to the budget, where the Trainer's own final evaluation runs. Scores at an intermediate k
are those of one run seen at step k, not of a run whose budget is k: the learning rate is
constant after warm-up, but SD-DiT's teacher momentum follows a cosine over the whole budget.

Scores are keyed by the study's marks (its --eval_at steps); at equal steps a mark is the
run's own step, at equal compute (--budget=flops) the run's step of the same training FLOPs
as the reference variant at that mark (`eval_steps` and `eval_flops` in the record say which).

Each scored step is saved at once in <workdir>/study_run.json (atomically), so a killed run
resumes where it stopped: scored steps are not redone, training continues from the newest
checkpoint (the Trainer resumes by itself). A run whose record says `complete` is skipped.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import time

import jax
import numpy as np

from diffdis_jax.core import files
from diffdis_jax.modes.run import build_trainer
from diffdis_jax.study.inputs import changed_inputs, fingerprint_inputs
from diffdis_jax.study.plan import (RECORD_FILE, PlannedRun, Settings, StudyError, read_record,
                                    write_json)

# XLA's lowest backend optimisation for the train step: compiles several times faster on
# CPU, steps run slower; for smoke runs (--fast_compile)
FAST_COMPILE = {'xla_backend_optimization_level': 0}
# seeded, run-independent things the tasks cache in their workdir: made once per --out
CACHE_FOLDERS = ('text_encoder', 'digits_classifier')


def share_caches(src_root: str, dst_root: str):
  """Copies cached text encoders and digits classifiers that `dst_root` lacks."""
  for folder in CACHE_FOLDERS:
    src = os.path.join(src_root, folder)
    if not os.path.isdir(src):
      continue
    for name in os.listdir(src):
      dst = os.path.join(dst_root, folder, name)
      if '.tmp' in name or os.path.exists(dst):
        continue
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      files.copy_file(os.path.join(src, name), dst)


def hardware() -> dict:
  device = jax.devices()[0]
  return {'backend': jax.default_backend(), 'device_kind': device.device_kind,
          'devices': jax.device_count(), 'cpu_count': os.cpu_count(),
          'machine': platform.machine(), 'jax': jax.__version__}


def finite_scores(scores: dict) -> dict:
  """{name: float, or None where the value is not finite (JSON has no NaN)}."""
  out = {}
  for key, value in scores.items():
    try:
      value = float(value)
    except (TypeError, ValueError):
      continue
    out[key] = value if math.isfinite(value) else None
  return out


def evaluate(trainer, state, step: int) -> tuple[dict, float]:
  """The task's final evaluation of the EMA params at `step` (the Trainer has just run it at
  the end of the budget), and the seconds it took."""
  if step == trainer.config.total_steps:
    return finite_scores(trainer.final_scores), trainer.final_eval_seconds
  t0 = time.perf_counter()
  preview_fn = trainer.task.make_preview_fn(trainer.model)
  scores = trainer.task.final_eval(preview_fn, state.ema_params)
  return finite_scores(scores), time.perf_counter() - t0


def _now() -> str:
  return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')


def _new_record(run: PlannedRun, inputs: dict) -> dict:
  return {'variant': run.variant.name, 'seed': run.seed,
          'overrides': json.loads(json.dumps(run.variant.overrides)), 'inputs': inputs,
          'evals': {}, 'wall_seconds': 0.0, 'compile_seconds': [], 'load_average': [],
          'complete': False, 'started': _now()}


def run_one(run: PlannedRun, settings: Settings, caches: str, say) -> str:
  """Trains and scores one run: 'done', 'skipped' (finished before, or another driver holds
  its workdir) or 'stopped' (SIGTERM under preemption.sigterm_requests_stop: the step reached
  is saved, a rerun continues).

  Two drivers whose variants or seeds overlap would otherwise train one run side by side,
  each saving over the other's checkpoints; the second one leaves the run to the first."""
  os.makedirs(run.workdir, exist_ok=True)
  with files.exclusive_folder(run.workdir) as ours:
    if not ours:
      say(f'{run.name}: another study driver is running it, skipped (run the same command '
          'again once it has finished to report it)')
      return 'skipped'
    return _train_and_score(run, settings, caches, say)


def _train_and_score(run: PlannedRun, settings: Settings, caches: str, say) -> str:
  record = read_record(run.workdir)
  if record is not None and record['complete']:
    say(f'{run.name}: finished before, skipped')
    return 'skipped'
  inputs = fingerprint_inputs(run.config)
  changed = changed_inputs(record and record.get('inputs'), inputs)
  if changed:
    raise StudyError(f'{run.name}: the contents of {", ".join(changed)} changed since the run '
                     'began (study_run.json keeps their fingerprints), so its scores would not '
                     'pair with the rest; restore those files, or delete '
                     f'{run.workdir} to run it again on the new ones')
  record = record or _new_record(run, inputs)
  t0 = time.perf_counter()
  record_path = os.path.join(run.workdir, RECORD_FILE)
  share_caches(caches, run.workdir)
  trainer = build_trainer(run.config, run.workdir)
  if settings.fast_compile:
    trainer.compiler_options = FAST_COMPILE
  record['num_params'] = int(sum(np.prod(x.shape) for x in
                                 jax.tree.leaves(trainer.abstract_state.params)))
  record['hardware'] = hardware()
  # the run's compute: its budget in steps and analytic model FLOPs (studies at equal compute
  # give each variant its own steps), and for each mark the step and FLOPs it was scored at
  record.update(budget=settings.budget, steps=run.config.total_steps,
                batch_size=run.config.batch_size, train_flops_per_image=run.flops_per_image,
                training_flops=run.training_flops(run.config.total_steps))
  record.setdefault('eval_steps', {})
  record.setdefault('eval_flops', {})
  write_json(record_path, record)
  for step, mark in zip(run.eval_at, run.marks):
    if str(mark) in record['evals']:
      continue
    state = trainer.train(stop_at=step)
    if int(state.step) < step:
      record['wall_seconds'] += time.perf_counter() - t0
      write_json(record_path, record)
      say(f'{run.name}: stopped as asked at step {int(state.step)} (saved); run the same '
          'command again to continue')
      return 'stopped'
    if int(state.step) > step:
      raise StudyError(f'{run.name}: its checkpoints are at step {int(state.step)}, past '
                       f'the evaluation step {step} that was never scored; delete '
                       f'{run.workdir} to run it again')
    scores, score_seconds = evaluate(trainer, state, step)
    now = time.perf_counter()
    record.setdefault('score_seconds', []).append(round(score_seconds, 1))
    record['evals'][str(mark)] = scores
    record['eval_steps'][str(mark)] = step
    record['eval_flops'][str(mark)] = run.training_flops(step)
    record['wall_seconds'] += now - t0
    record['compile_seconds'].append(round(trainer.compile_seconds, 2))
    record['load_average'].append(round(os.getloadavg()[0], 2))
    t0 = now
    write_json(record_path, record)
    shown = ', '.join(f'{k} {v:.4g}' if v is not None else f'{k} n/a'
                      for k, v in sorted(scores.items()))
    say(f'{run.name}: step {step}: {shown or "no scores"} '
        f'({record["wall_seconds"]:.0f} s so far)')
  record['complete'] = True
  record['finished'] = _now()
  write_json(record_path, record)
  share_caches(run.workdir, caches)
  return 'done'
