"""Where DiffDis's image-text pairs come from: one class per `data.name`.

  captioned_digits  the CPU demo: digits in pixel space (no VAE), each with a caption drawn
                    from templates per example and epoch; c and e come from the demo's frozen
                    text encoder (text_encoders.py), looked up per caption on the host. The
                    held-out digits give the final evaluation: zero-shot accuracy with the
                    class prompts as candidates, caption retrieval, and (with
                    eval.metric_samples) the digits metric of text-to-image samples.
  image_text_pairs  shards of (image, caption) in data.dir (data/captions.py), decoded and
                    tokenized on the host; SD's VAE and CLIP turn each sharded batch into
                    latents, c and e on the devices before the step (pair_encoder.py).

A source serves its task: it reads the frozen encoders and the zero-shot predictor from it.
"""
from __future__ import annotations

import functools
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np

from diffdis_jax.data import captions, pipeline
from diffdis_jax.data import digits_captions as dc
from diffdis_jax.data.digits import load_digits
from diffdis_jax.eval import zeroshot
from diffdis_jax.eval.digits_metric import DigitsMetric
from diffdis_jax.tasks.base import Task
from diffdis_jax.tasks.diffdis.pair_encoder import PairEncoder

# noise streams apart from the preview grid's (seed + 1) and the zero-shot predictor's (+ 3)
GENERATION_NOISE_OFFSET = 4


class Source:
  """What every source has; the parts a source may leave out default as a Task's do (no
  device-side preparation, no input metrics, nothing to score at the end)."""
  name: str
  labelled = False      # batches carry 'label' (read by diffdis.positives='same_label')
  prepare_batch = Task.prepare_batch
  input_metrics = Task.input_metrics
  final_eval = Task.final_eval

  def __init__(self, task):
    self.task, self.config = task, task.config


class CaptionedDigits(Source):
  name = 'captioned_digits'
  labelled = True

  @functools.cached_property
  def caption_tables(self):
    """c and e of every caption, indexed [digit, template]."""
    table = dc.caption_table()
    context, query = self.task.text.encode(list(table.ravel()))
    return (context.reshape(table.shape + context.shape[1:]),
            query.reshape(table.shape + query.shape[1:]))

  def train_iterator(self, process_index: int, process_count: int):
    config = self.config
    contexts, queries = self.caption_tables
    templates = contexts.shape[1]

    def add_caption(example, rng):
      t = int(rng.integers(templates))
      label = int(example['label'])
      return dict(example, context=contexts[label, t], query=queries[label, t])

    source = pipeline.ArraySource(load_digits('train', config.data.image_size))
    return iter(pipeline.host_dataset(source, global_batch=config.batch_size, seed=config.seed,
                                      process_index=process_index,
                                      process_count=process_count, transform=add_caption))

  def preview_prompts(self) -> list[str]:
    """One prompt per digit, in digit order: the first class template."""
    return [dc.CLASS_TEMPLATES[0].format(name) for name in dc.CLASS_NAMES]

  def final_eval(self, preview_fn, params) -> dict:
    scores = {}
    if self.config.diffdis.align_mode != 'none':
      scores.update(self.zeroshot_scores(params))
    if self.config.eval.metric_samples:
      scores.update(self.generation_scores(preview_fn, params, self.config.eval.metric_samples))
    return scores

  def zeroshot_scores(self, params) -> dict:
    """Zero-shot top-1/top-5 on the held-out digits (class prompts as candidates) and
    image<->caption retrieval recalls over their captions."""
    config, d = self.config, self.config.diffdis
    test = dc.load_captioned_digits('test', config.data.image_size, seed=config.seed)
    fns = self.task.zeroshot_functions()
    preds = fns.predict(params, test['image'])
    queries = zeroshot.class_queries(fns.encode, dc.CLASS_NAMES, d.zeroshot.templates)
    scores = zeroshot.topk_accuracy(zeroshot.similarity(preds, queries), test['label'])
    caption_queries = fns.encode(list(test['caption']))
    scores.update(zeroshot.retrieval_recalls(zeroshot.similarity(preds, caption_queries),
                                             np.arange(len(caption_queries))))
    logging.info('zero-shot on %d held-out digits: %s', len(preds), scores)
    return scores

  def generation_scores(self, preview_fn, params, num_samples: int) -> dict:
    """fd_digits and sample_class_acc (eval/digits_metric.py) of text-to-image samples of the
    class prompts, the digits cycling 0..9: the class of a sample is the digit its prompt
    names."""
    config, m = self.config, self.config.model
    labels = np.arange(num_samples, dtype=np.int32) % dc.NUM_CLASSES
    class_context = self.task.prompt_contexts  # one per digit, in digit order
    noise = jax.random.normal(jax.random.PRNGKey(config.seed + GENERATION_NOISE_OFFSET),
                              (num_samples, m.input_size, m.input_size, m.in_channels))
    samples = jax.device_get(preview_fn(params, noise, jnp.asarray(class_context[labels]),
                                        jnp.asarray(self.task.null_context)))
    cache = config.eval.get('classifier_dir') or (
        os.path.join(self.task.workdir, 'digits_classifier') if self.task.workdir else None)
    metric = DigitsMetric.create(cache_dir=cache, seed=0, size=config.data.image_size)
    return metric.evaluate(samples, labels)


class ImageTextPairs(Source):
  name = 'image_text_pairs'

  @functools.cached_property
  def pair_encoder(self) -> PairEncoder:
    sd = self.task.stable_diffusion
    return PairEncoder(sd.vae, sd.vae_params, *self.task.clip_text,
                       query=self.config.diffdis.query, seed=self.config.seed)

  def train_iterator(self, process_index: int, process_count: int):
    config = self.config
    records = captions.CaptionRecords(
        captions.find_shards(config.data.dir), image_size=self.task.pixel_size,
        tokenizer=self.task.stable_diffusion.tokenizer,
        max_length=config.diffdis.context_length, seed=config.seed,
        process_index=process_index, process_count=process_count)
    return captions.CaptionBatches(records, config.batch_size // process_count,
                                   keys=('image', 'input_ids', 'attention_mask'))

  def prepare_batch(self, batch, step: int):
    """Latents, c and e from the frozen encoders, on the devices."""
    return self.pair_encoder(batch, step)

  def input_metrics(self, data_iterator) -> dict:
    """Pairs skipped so far on this host (undecodable image, empty caption, ...)."""
    return {'skipped_records': data_iterator.records.skipped_records}

  def preview_prompts(self) -> list[str]:
    return list(self.config.diffdis.sample.prompts)


SOURCES = {source.name: source for source in (CaptionedDigits, ImageTextPairs)}
