"""The seeded comparison studies of issue 10 (`launch/study.py`, docs/study.md).

  plan.py    flags -> settings, the runs (variant x seed) and their configs; every check of
             the input, before anything is compiled or written
  run.py     one run: train through the Trainer to each evaluation step, score, record
  report.py  the finished runs of a study -> results.json and table.md
"""
