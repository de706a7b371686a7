"""Starts a `maskdit_finetune` run from its `maskdit` twin's checkpoint instead of from step 0.

The two variants are one config until the final phase begins (step 2,700 of 3,000): the same
model, data, seed and learning rate, and the phase fields are not part of a run's identity.
So `maskdit`'s step-2,250 checkpoint is the state `maskdit_finetune` reaches at step 2,250,
bit for bit (seed 0, trained both ways, logs the same parameter fingerprints at 750, 1,500 and
2,250), and resume is exact (tests/test_resume.py, tests/test_final_phase.py). The branch
copies that checkpoint, the metrics log and the identity, and a study record holding the
twin's scores at the shared marks; the study driver then trains the last 750 steps (the
phase among them) and scores step 3,000 as it does for any resumed run.

The record says so: `branched_from` names the twin's run and step, and its timings (wall,
scoring, compile) are this run's own: the twin's are in its record.

Usage, from the repository root (workdirs as `launch/study.py --scale=cpu_ratio` left them):
    PYTHONPATH=. python docs/study/sddit_fmnist_ratio_cpu/branch_finetune.py SEED [SEED ...]
then `launch/study.py ... --only=maskdit_finetune` as usual.
"""
import json
import os
import shutil
import sys

from configs.study import MASKDIT_FINETUNE

STUDY = 'workdirs/study_ratio/sddit_fmnist'
SOURCE, TARGET = 'maskdit', 'maskdit_finetune'
STEP = 2250            # the last mark before the final phase starts (step 2,700)
PHASE_START = 2700
SHARED = ('evals', 'eval_steps', 'eval_flops')


def branch(seed: int):
  source = os.path.join(STUDY, SOURCE, f'seed{seed}')
  target = os.path.join(STUDY, TARGET, f'seed{seed}')
  with open(os.path.join(source, 'study_run.json')) as f:
    record = json.load(f)
  if not record['complete'] or str(STEP) not in record['evals']:
    sys.exit(f'error: {source} has not finished (no score at step {STEP})')
  if os.path.exists(target):
    sys.exit(f'error: {target} exists; delete it to branch again')
  assert STEP < PHASE_START and TARGET == MASKDIT_FINETUNE.name
  marks = [m for m in record['evals'] if int(m) <= STEP]
  os.makedirs(os.path.join(target, 'checkpoints'))
  shutil.copytree(os.path.join(source, 'checkpoints', str(STEP)),
                  os.path.join(target, 'checkpoints', str(STEP)))
  for name in ('metrics.jsonl', 'run_identity.json'):  # the trainer truncates the log itself
    shutil.copy(os.path.join(source, name), os.path.join(target, name))
  own = {key: {m: record[key][m] for m in marks} for key in SHARED}
  # the timings are this run's own (the scored marks' are in the twin's record)
  new = dict(record, **own, variant=TARGET, complete=False, wall_seconds=0.0,
             overrides=json.loads(json.dumps(MASKDIT_FINETUNE.overrides)),
             score_seconds=[], compile_seconds=[], load_average=[],
             branched_from={'run': f'{SOURCE}/seed{seed}', 'step': STEP,
                            'why': 'one config until the final phase; see branch_finetune.py'})
  for key in ('finished', 'steps', 'training_flops', 'train_flops_per_image'):
    new.pop(key, None)  # the driver writes this run's own on resume
  with open(os.path.join(target, 'study_run.json'), 'w') as f:
    json.dump(new, f, indent=1, sort_keys=True)
  print(f'{target}: from {source} at step {STEP} (marks {marks} taken over)')


if __name__ == '__main__':
  for arg in sys.argv[1:]:
    branch(int(arg))
