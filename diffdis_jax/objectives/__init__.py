"""Training objectives, one module per method, each a set of pure functions:

  init_aux(params, model, config) -> aux           state the method keeps besides params
  loss_fn(params, batch, rng, aux, step, *, model, config) -> (loss, (metrics, outputs))
  update_aux(aux, params, outputs, step, *, model, config) -> aux
  uses_teacher(config) -> bool                     whether aux holds an EMA teacher

The method's task (tasks/) names its objective; nothing else picks one by method name.
"""
