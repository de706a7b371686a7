"""Where DiffDis's image-text pairs come from: one class per `data.name`.

  captioned_digits  the DiffDis CPU demo: digits in pixel space (no VAE)
  captioned_fmnist  the Fashion-MNIST recipe: the 8x8x4 latents `make fmnist` extracts,
                    read as SD-DiT reads them (posterior draws of the image or its flip)
  image_text_pairs  shards of (image, caption) in data.dir (data/captions.py), decoded and
                    tokenized on the host; SD's VAE and CLIP turn each sharded batch into
                    latents, c and e on the devices before the step (pair_encoder.py).

The two captioned class sets give each training image a caption drawn from its class's
training captions (a caption module, data/*_captions.py) per example and epoch; c and e come
from the demo's frozen text encoder (text_encoders.py), looked up per caption on the host.
Their final evaluation is on the test split: zero-shot top-1/top-5 with each prompt set as
candidates, image<->caption retrieval with captions of each prompt set, and (with
eval.metric_samples) the set's classifier metric of text-to-image samples of the class
prompts. Metrics of the held-out prompts carry the suffix '_heldout'.

A source serves its task: it reads the frozen encoders and the zero-shot predictor from it.
"""
from __future__ import annotations

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np

from diffdis_jax.data import captions, pipeline
from diffdis_jax.data import digits_captions
from diffdis_jax.data import fashion_mnist
from diffdis_jax.data import fashion_mnist_captions
from diffdis_jax.data.digits import load_digits
from diffdis_jax.eval import image_set_metrics, zeroshot
from diffdis_jax.eval.eval_json import update_eval_json
from diffdis_jax.tasks import base
from diffdis_jax.tasks.base import Task
from diffdis_jax.tasks.diffdis.pair_encoder import PairEncoder
from diffdis_jax.tasks.diffdis.text_encoders import CaptionTextEncoder, cache_name

# noise streams apart from the preview grid's (seed + 1) and the zero-shot predictor's (+ 3)
GENERATION_NOISE_OFFSET = 4
HELDOUT_SUFFIX = '_heldout'
TEST_SECTION = 'test_split'   # eval.json's section of a captioned set's scores


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


class CaptionedClasses(Source):
  """A labelled image set whose captions are made from class names (see the module doc).

  A set names its caption module and says how its images are read: `examples()` for
  training, `test_set()` for the final evaluation (images as the zero-shot predictor takes
  them), `pretrain_images()` for the text encoder's pre-stage.
  """
  labelled = True
  captions = None                 # the caption module (data/*_captions.py)
  prompt_sets = ('train',)        # the zero-shot candidates' prompt sets, training's first

  def examples(self):
    """(grain source of training examples, transform(example, rng) -> image/label or None)."""
    raise NotImplementedError

  def test_set(self) -> dict:
    """{'image', 'label'} of the held-out split, images as `zeroshot_functions` takes them."""
    raise NotImplementedError

  def pretrain_images(self) -> tuple[np.ndarray, np.ndarray]:
    raise NotImplementedError

  @classmethod
  def data_key(cls, config) -> str:
    """Names the pre-stage's images in the text encoder's cache fingerprint."""
    raise NotImplementedError

  @classmethod
  def text_encoder_file(cls, config) -> str:
    """The file `config`'s text encoder is cached under (in a workdir's text_encoder/)."""
    t = config.text_encoder
    return cache_name(t, t.seed, cls.captions, cls.data_key(config))

  def text_encoder(self, cache_dir, read_only: bool = False):
    return CaptionTextEncoder.create(self.config.text_encoder, cache_dir, self.captions,
                                     self.pretrain_images, data_key=self.data_key(self.config),
                                     seed=self.config.text_encoder.seed, read_only=read_only)

  def class_prompts(self, prompt_set: str) -> list[list[str]]:
    return self.captions.class_prompts(prompt_set)

  @functools.cached_property
  def caption_tables(self):
    """c and e of every training caption, indexed [class, caption]."""
    table = self.captions.caption_table()
    context, query = self.task.text.encode(list(table.ravel()))
    return (context.reshape(table.shape + context.shape[1:]),
            query.reshape(table.shape + query.shape[1:]))

  def train_iterator(self, process_index: int, process_count: int):
    config = self.config
    contexts, queries = self.caption_tables
    per_class = contexts.shape[1]
    source, transform = self.examples()

    def add_caption(example, rng):
      if transform is not None:
        example = transform(example, rng)
      k = int(rng.integers(per_class))
      label = int(example['label'])
      return dict(example, context=contexts[label, k], query=queries[label, k])

    return iter(pipeline.host_dataset(source, global_batch=config.batch_size, seed=config.seed,
                                      process_index=process_index,
                                      process_count=process_count, transform=add_caption))

  def preview_prompts(self) -> list[str]:
    """One prompt per class, in label order: its first training prompt."""
    return [prompts[0] for prompts in self.class_prompts('train')]

  def final_eval(self, preview_fn, params) -> dict:
    """The test split's scores, also written to eval.json (as --mode=eval writes them)."""
    return self.evaluate(preview_fn, params, step=self.config.total_steps)

  def evaluate(self, preview_fn, params, step: int) -> dict:
    """Scores of `params` on the test split, to eval.json's TEST_SECTION with how they
    were made."""
    config = self.config
    test, fns = self.test_set(), self.task.zeroshot_functions()
    scores = {}
    if config.diffdis.align_mode != 'none':
      scores.update(self.zeroshot_scores(params, test, fns))
    if config.eval.metric_samples:
      scores.update(self.generation_scores(preview_fn, params, config.eval.metric_samples))
    if self.task.workdir and jax.process_index() == 0:
      settings = dict(fns.settings, checkpoint_step=int(step),
                      metric_samples=config.eval.metric_samples,
                      prompts={s: len(self.class_prompts(s)[0]) for s in self.prompt_sets},
                      sample_steps=config.diffdis.sample.steps,
                      sample_guidance=config.diffdis.sample.guidance)
      if 'heldout' in self.prompt_sets:  # the templates of zeroshot_top1_heldout_t{i}
        settings['heldout_templates'] = list(self.captions.TEMPLATES['heldout'])
      update_eval_json(self.task.workdir, TEST_SECTION,
                       {'metrics': scores, 'settings': settings,
                        'num_images': len(test['label'])})
    return scores

  def zeroshot_scores(self, params, test: dict, fns) -> dict:
    """Per prompt set: zero-shot top-1/top-5 on the `test` split ({'image', 'label'}) with
    the class prompts as candidates, and image<->caption retrieval recalls, one seeded
    caption per image; `fns` is the task's ZeroShotFunctions. With held-out prompts also
    `heldout_template_scores`."""
    preds = fns.predict(params, test['image'])
    scores, ensembles = {}, {}
    for prompt_set in self.prompt_sets:
      suffix = '' if prompt_set == 'train' else HELDOUT_SUFFIX
      queries = ensembles[prompt_set] = zeroshot.prompt_queries(
          fns.encode, self.class_prompts(prompt_set))
      found = zeroshot.topk_accuracy(zeroshot.similarity(preds, queries), test['label'])
      texts = self.test_captions(test['label'], prompt_set)
      found.update(zeroshot.retrieval_recalls(zeroshot.similarity(preds, fns.encode(texts)),
                                              np.arange(len(texts))))
      scores.update({k + suffix: v for k, v in found.items()})
    if 'heldout' in ensembles:
      scores.update(self.heldout_template_scores(preds, test['label'], fns.encode, ensembles))
    logging.info('zero-shot on %d test images: %s', len(preds), scores)
    return scores

  @classmethod
  def heldout_template_scores(cls, preds, labels, encode, ensembles: dict) -> dict:
    """Whether held-out prompts are held out in effect, from the frozen text encoder's side
    and the model's:
      ensemble_cosine_{mean,min,max}  over classes, the cosine between the class's training
                                      and held-out prompt ensembles (1: the text encoder
                                      maps both phrasings to one point)
      zeroshot_top1_heldout_t{i}      zero-shot top-1 with the i-th held-out template alone
                                      (around each class name), cls.captions.TEMPLATES
    """
    cosine = np.sum(ensembles['train'] * ensembles['heldout'], axis=-1)
    scores = {'ensemble_cosine_mean': float(cosine.mean()),
              'ensemble_cosine_min': float(cosine.min()),
              'ensemble_cosine_max': float(cosine.max())}
    for i in range(len(cls.captions.TEMPLATES['heldout'])):
      queries = zeroshot.prompt_queries(encode, cls.captions.class_prompts('heldout', i))
      top1 = zeroshot.topk_accuracy(zeroshot.similarity(preds, queries), labels, ks=(1,))
      scores[f'zeroshot_top1{HELDOUT_SUFFIX}_t{i}'] = top1['zeroshot_top1']
    return scores

  def test_captions(self, labels, prompt_set: str) -> list[str]:
    return self.captions.sample_captions(labels, np.random.default_rng(self.config.seed),
                                         prompt_set)

  def generation_scores(self, preview_fn, params, num_samples: int) -> dict:
    """The set's classifier metric (fd_digits or fd_fmnist, and sample_class_acc) of
    text-to-image samples of the class prompts, the classes cycling in label order: the
    class of a sample is the one its prompt names."""
    config, m = self.config, self.config.model
    class_context = self.task.prompt_contexts  # one per class, in label order
    labels = np.arange(num_samples, dtype=np.int32) % len(class_context)
    noise = jax.random.normal(jax.random.PRNGKey(config.seed + GENERATION_NOISE_OFFSET),
                              (num_samples, m.input_size, m.input_size, m.in_channels))
    samples = jax.device_get(preview_fn(params, noise, jnp.asarray(class_context[labels]),
                                        jnp.asarray(self.task.null_context)))
    metric = image_set_metrics.metric_for(config, self.task.workdir)
    return metric.evaluate(samples, labels)


class CaptionedDigits(CaptionedClasses):
  name = 'captioned_digits'
  captions = digits_captions

  def examples(self):
    return pipeline.ArraySource(load_digits('train', self.config.data.image_size)), None

  def test_set(self) -> dict:
    return load_digits('test', self.config.data.image_size)

  def pretrain_images(self):
    data = load_digits('train', self.config.data.image_size)
    return data['image'], data['label']

  @classmethod
  def data_key(cls, config) -> str:
    return f'digits{config.data.image_size}'

  def class_prompts(self, prompt_set: str) -> list[list[str]]:
    """The digits' zero-shot prompts are diffdis.zeroshot.templates around each name."""
    del prompt_set  # the digits have one prompt set
    templates = self.config.diffdis.zeroshot.templates
    return [[t.format(name) for t in templates] for name in digits_captions.CLASS_NAMES]

  def test_captions(self, labels, prompt_set: str) -> list[str]:
    return digits_captions.sample_captions(labels, np.random.default_rng(self.config.seed))


class CaptionedFashionMNIST(CaptionedClasses):
  name = 'captioned_fmnist'
  captions = fashion_mnist_captions
  prompt_sets = fashion_mnist_captions.PROMPT_SETS

  @property
  def images_dir(self) -> str:
    return image_set_metrics.images_dir(self.config)

  def examples(self):
    scale = base.latent_scale(self.config, self.config.data.vae_path)
    return (pipeline.latent_source(self.config.data.dir, self.config.data.split),
            pipeline.sample_latent(scale))

  def test_set(self) -> dict:
    """The test images at the VAE's side (padded to 32x32); eval.test_images caps them."""
    data = fashion_mnist.load_split(self.images_dir, 'test')
    n = self.config.eval.test_images or len(data['label'])
    return {'image': fashion_mnist.to_model_input(data['image'][:n], self.task.pixel_size),
            'label': data['label'][:n]}

  def pretrain_images(self):
    data = fashion_mnist.load_split(self.images_dir, 'train')
    return fashion_mnist.to_model_input(data['image'], fashion_mnist.SIDE), data['label']

  @classmethod
  def data_key(cls, config) -> str:
    return 'fashion_mnist28'


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


SOURCES = {source.name: source
           for source in (CaptionedDigits, CaptionedFashionMNIST, ImageTextPairs)}
