"""The run-mode layer, the two calls `launch/main.py` makes:

  checks.check_run(config, mode, workdir, num_devices)   every check of a run's input
  run.run(mode, config, workdir)                          train, grid, sample, eval or
                                                          extract_latents

They are separate modules so that checking bad input imports no TensorFlow (clu's writers,
which the Trainer needs, do): the one-line answer comes fast and alone.
"""
