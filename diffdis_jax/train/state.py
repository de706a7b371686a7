"""The training state: everything needed to continue a run bit for bit."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax


@flax.struct.dataclass
class TrainState:
  step: jax.Array        # int32 scalar: number of updates applied
  params: Any            # trained parameters (float32)
  opt_state: Any         # optax state
  ema_params: Any        # sampling EMA of params
  aux: Any               # method state (SD-DiT: teacher encoder and head, logit centres)
  rng: jax.Array         # base key; the key of step s is fold_in(rng, s)
  skipped_steps: jax.Array  # int32 scalar: updates skipped for non-finite loss or gradients
