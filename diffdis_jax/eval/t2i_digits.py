"""DiffDis's generation metric on the captioned digits: the digits metric of text-to-image
samples of the class prompts.

The SD-DiT demo scores class-conditional samples with `eval/digits_metric.py`; the DiffDis
demo generates from text, so here the "class" of a sample is the digit its prompt names
('a handwritten digit seven', the first of `CLASS_TEMPLATES`, as in the preview grid):

  fd_digits         Fréchet distance in the digits classifier's features between the samples
                    and the 297 real held-out digits (depends on the sample count)
  sample_class_acc  the fraction of samples the classifier reads as the prompted digit

    scores = t2i_digits_scores(task, sample_fn, ema_params, num_samples=300, seed=0,
                               classifier_cache=DIR)
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffdis_jax.data import captions_digits as cd
from diffdis_jax.eval.digits_metric import DigitsMetric

# the noise stream of these samples: apart from the preview grid's (seed + 1) and the
# zero-shot evaluation's (seed + 3)
NOISE_OFFSET = 4


def class_prompt_labels(num_samples: int) -> np.ndarray:
  """Balanced digit labels 0, 1, ..., 9, 0, 1, ...: one prompt per sample."""
  return np.arange(num_samples, dtype=np.int32) % cd.NUM_CLASSES


def t2i_digits_scores(task, sample_fn, params, num_samples: int, seed: int,
                      classifier_cache: str | None) -> dict[str, float]:
  """`task`: a DiffDisTask on captioned digits (its frozen text encoder makes c);
  `sample_fn`: its jitted text-to-image sampler (task.make_preview_fn)."""
  m = task.config.model
  labels = class_prompt_labels(num_samples)
  class_context = task.text.encode(task.preview_prompts())[0]  # one per digit, in order
  null_context = task.text.encode([''])[0][0]
  noise = jax.random.normal(jax.random.PRNGKey(seed + NOISE_OFFSET),
                            (num_samples, m.input_size, m.input_size, m.in_channels))
  samples = jax.device_get(sample_fn(params, noise, jnp.asarray(class_context[labels]),
                                     jnp.asarray(null_context)))
  metric = DigitsMetric.create(cache_dir=classifier_cache, seed=0,
                               size=task.config.data.image_size)
  return metric.evaluate(samples, labels)
