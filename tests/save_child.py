"""Child process of tests/test_kill_during_save.py: in WORKDIR, saves step 1 of a 128 MiB state
and waits for it, then starts the async save of step 2 and waits for that; the test kills it
during the second save. Each save's params_fingerprint is logged to metrics.jsonl as the
training loop logs it (right after the save starts).

  python tests/save_child.py WORKDIR
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=g-import-not-at-top
import flax
import grain
import numpy as np

from diffdis_jax.train import checkpoint as ckpt_lib
from diffdis_jax.train.metrics_log import JsonlWriter

ARRAYS, SIZE = 8, 4 * 1024 * 1024  # float32: 16 MiB each


@flax.struct.dataclass
class State:
  params: dict


def state_at(step: int) -> State:
  return State(params={f'w{i}': np.full((SIZE,), step * 100 + i, np.float32)
                       for i in range(ARRAYS)})


def main(workdir: str):
  data = iter(grain.MapDataset.range(100).to_iter_dataset())
  checkpointer = ckpt_lib.Checkpointer(workdir)
  log = JsonlWriter(workdir)
  for step in (1, 2):
    next(data)
    state = state_at(step)
    checkpointer.save(step, state, data)
    log.write(step, {'params_fingerprint': ckpt_lib.params_fingerprint(state.params)})
    checkpointer.wait()
    print(f'saved {step}', flush=True)
  checkpointer.close()


if __name__ == '__main__':
  main(sys.argv[1])
