"""Seeded comparison studies (`launch/study.py`, docs/study.md): every variant of a method at
the same data, steps, batch and seeds, scored at the same steps.

  spec.py    what a study is (base config, scales, variants) and how a run's config is made;
             the studies themselves are configs/study.py
  plan.py    flags -> settings, the runs (variant x seed) and their configs; every check of
             the input, before anything is compiled or written
  inputs.py  fingerprints of the files a run reads (latents, VAE, classifier, generator)
  run.py     one run: train through the Trainer to each evaluation step, score, record
  report.py  the finished runs of a study -> results.json and table.md
"""
