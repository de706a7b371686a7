"""The fine-tune study's starting point: the generator's EMA weights (the gen_only variant's
initial state), scored by the study's own evaluator at the study's 500 samples.

Usage, from the repository root, with workdirs/fmnist/generator in place (configs/study.py,
scale finetune): PYTHONPATH=. python docs/study/diffdis_fmnist_finetune_cpu/score_start.py SEED
"""
import json
import sys
import tempfile

from absl import logging
from configs import study as study_configs
from diffdis_jax.modes.run import build_trainer
from diffdis_jax.study import run as study_run

logging.set_verbosity('error')
seed = int(sys.argv[1])
config = study_configs.STUDIES['diffdis_fmnist'].build_config('finetune', 'gen_only', seed, 500,
                                                             {}, 500)
with tempfile.TemporaryDirectory() as workdir:  # nothing is trained or saved: a scratch workdir
  trainer = build_trainer(config, workdir)
  state = trainer.init_state()
  scores, seconds = study_run.evaluate(trainer, state, 0)
print(json.dumps({'seed': seed, 'step': int(state.step), 'scores': scores,
                  'seconds': round(seconds)}))
