"""Starts a final-phase run (`maskdit_finetune`, `teacher_sigma_fixed_finetune`) from its twin
without the phase (`maskdit`, `teacher_sigma_fixed`) instead of from step 0.

A variant and its twin are one config until the final phase begins (step 2,700 of 3,000): the
same model, data, seed and learning rate, and the phase fields are not part of a run's
identity. So the twin's step-2,250 checkpoint is the state the final-phase variant reaches at
step 2,250, bit for bit (maskdit_finetune seed 0, trained from step 0, logs maskdit's
parameter fingerprints at 750, 1,500 and 2,250), and resume is exact (tests/test_resume.py,
tests/test_final_phase.py). The branch copies that checkpoint, the metrics log and the
identity, and a study record holding the twin's scores at the shared marks; the study driver
then trains the last 750 steps (the phase among them) and scores step 3,000 as it does for
any resumed run.

The record says so: `branched_from` names the twin's run and step, and its timings (wall,
scoring, compile) are this run's own: the twin's are in its record.

Usage, from the repository root (workdirs as `launch/study.py --scale=cpu_ratio` left them):
    PYTHONPATH=. python docs/study/sddit_fmnist_ratio_cpu/branch_finetune.py VARIANT SEED [SEED ...]
then `launch/study.py ... --only=VARIANT` as usual.
"""
import json
import os
import shutil
import sys

from configs.study import STUDIES

STUDY = 'workdirs/study_ratio/sddit_fmnist'
STEP = 2250            # the last mark before the final phase starts (step 2,700)
PHASE_START = 2700
SHARED = ('evals', 'eval_steps', 'eval_flops')
PHASE_FIELDS = ('final_phase.fraction', 'final_phase.lr', 'sddit.final_phase_dis_weight')


def twin_of(name: str):
  """(the variant, the variant with the same overrides but no final phase)."""
  variants = {v.name: v for v in STUDIES['sddit_fmnist'].variants}
  variant = variants[name]
  plain = {k: v for k, v in variant.overrides.items() if k not in PHASE_FIELDS}
  # the derived overrides too: `dit_equal_size` has `dit`'s overrides and a deeper model
  twins = [v for v in variants.values()
           if v.overrides == plain and v.derived == variant.derived and v.name != name]
  if not set(PHASE_FIELDS[:2]) <= set(variant.overrides) or len(twins) != 1:
    sys.exit(f'error: {name} has no twin without a final phase')
  return variant, twins[0]


def branch(name: str, seed: int):
  variant, twin = twin_of(name)
  source = os.path.join(STUDY, twin.name, f'seed{seed}')
  target = os.path.join(STUDY, name, f'seed{seed}')
  with open(os.path.join(source, 'study_run.json')) as f:
    record = json.load(f)
  if not record['complete'] or str(STEP) not in record['evals']:
    sys.exit(f'error: {source} has not finished (no score at step {STEP})')
  if os.path.exists(target):
    sys.exit(f'error: {target} exists; delete it to branch again')
  assert STEP < PHASE_START
  marks = [m for m in record['evals'] if int(m) <= STEP]
  os.makedirs(os.path.join(target, 'checkpoints'))
  shutil.copytree(os.path.join(source, 'checkpoints', str(STEP)),
                  os.path.join(target, 'checkpoints', str(STEP)))
  for file in ('metrics.jsonl', 'run_identity.json'):  # the trainer truncates the log itself
    shutil.copy(os.path.join(source, file), os.path.join(target, file))
  own = {key: {m: record[key][m] for m in marks} for key in SHARED}
  # the timings are this run's own (the scored marks' are in the twin's record)
  new = dict(record, **own, variant=name, complete=False, wall_seconds=0.0,
             overrides=json.loads(json.dumps(variant.overrides)),
             score_seconds=[], compile_seconds=[], load_average=[],
             branched_from={'run': f'{twin.name}/seed{seed}', 'step': STEP,
                            'why': 'one config until the final phase; see branch_finetune.py'})
  for key in ('finished', 'steps', 'training_flops', 'train_flops_per_image'):
    new.pop(key, None)  # the driver writes this run's own on resume
  with open(os.path.join(target, 'study_run.json'), 'w') as f:
    json.dump(new, f, indent=1, sort_keys=True)
  print(f'{target}: from {source} at step {STEP} (marks {marks} taken over)')


if __name__ == '__main__':
  for arg in sys.argv[2:]:
    branch(sys.argv[1], int(arg))
