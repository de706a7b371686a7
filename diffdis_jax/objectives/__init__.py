"""Training objectives, one module per method, each a set of pure functions:

  init_aux(params, model, config) -> aux           state the method keeps besides params
  loss_fn(params, batch, rng, aux, step, *, model, config) -> (loss, (metrics, outputs))
  update_aux(aux, params, outputs, step, *, model, config) -> aux
"""
from diffdis_jax.objectives import diffdis, sddit

OBJECTIVES = {'sddit': sddit, 'diffdis': diffdis}


def get_objective(method: str):
  try:
    return OBJECTIVES[method]
  except KeyError:
    raise ValueError(f'unknown method {method!r}; known: {sorted(OBJECTIVES)}') from None
