"""The zero-shot suite of DiffDis (paper §3.2): twelve classification datasets read through tfds.

`zeroshot_classes.json` holds, per dataset, the tfds name and test split, the class names in
the order of tfds' label ids and a few CLIP-style prompt templates (written for this project).
Class names are the datasets' own label names as tfds exposes them (`features['label'].names`),
with underscores as spaces; where tfds only has codes the dataset's own names are used: CIFAR's
label lists, FGVC-Aircraft's 100 variants (not in the tfds catalogue: prepare it as a tfds
dataset named `fgvc_aircraft`, labels in the variants' alphabetical order), ImageNet's category
names in synset order, EuroSAT's classes spelled out. Nothing is downloaded: a dataset is read
only when prepared under `data_dir` (`<data_dir>/<tfds name>/[<config>/]<version>/`).

Everything model-specific comes in as two functions:
    predict(params, images) -> (n, d) query estimates; images (n, s, s, 3) float in [-1, 1]
    encode(texts: list[str]) -> (n, d) text queries
For DiffDis, `DiffDisTask.zeroshot_functions` builds them (VAE encoder for latent models, then
`diffdis_sampler.make_query_predictor`); `evaluate_and_record` below is what `--mode=eval`
runs for it, writing eval.json's 'zeroshot' and 'retrieval' sections.

Images are predicted a batch at a time as they are read, so only the (n, d) estimates are
held: a split at 512 px would not fit in memory as float32 pixels.
"""
from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import time
from typing import Callable, NamedTuple, Optional

import jax
import numpy as np
from PIL import Image

from diffdis_jax.data.captions import CaptionRecords, find_shards
from diffdis_jax.eval import zeroshot
from diffdis_jax.eval.eval_json import update_eval_json

SPECS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'zeroshot_classes.json')
Predict = Callable[..., np.ndarray]
Encode = Callable[[list], np.ndarray]


class ZeroShotFunctions(NamedTuple):
  """What a model gives the suite: see the module docstring."""
  predict: Predict
  encode: Encode
  image_size: int      # side s of the images `predict` takes
  settings: dict       # how `predict` is computed (sampler steps, guidance, seeds, ...)


def load_specs(path: str = SPECS_FILE) -> dict:
  with open(path) as f:
    return json.load(f)


def parse_datasets(text: str, specs: dict) -> list[str]:
  """'cifar10,dtd' -> names; 'all' -> every dataset of the suite; '' -> none."""
  if text.strip() == 'all':
    return list(specs)
  names = [n.strip() for n in text.split(',') if n.strip()]
  unknown = [n for n in names if n not in specs]
  if unknown:
    raise ValueError(f'unknown zero-shot datasets {unknown}; known: {sorted(specs)} or all')
  return names


def prepared_dir(tfds_name: str, data_dir: str) -> Optional[str]:
  """The newest prepared version folder of `tfds_name` under data_dir, or None."""
  infos = glob.glob(os.path.join(glob.escape(data_dir), tfds_name, '**', 'dataset_info.json'),
                    recursive=True)
  if not infos:
    return None

  def version(path):
    parts = os.path.basename(os.path.dirname(path)).split('.')
    return tuple(int(p) if p.isdigit() else -1 for p in parts)
  return os.path.dirname(max(infos, key=version))


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 HWC (any size, 1 or 3 channels) -> float32 (size, size, 3) in [-1, 1]: the shorter
  side resized to `size` (bicubic), then the centre crop, as CLIP's evaluation does."""
  image = np.asarray(image)
  if image.ndim == 2 or image.shape[-1] == 1:
    image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=-1)
  h, w = image.shape[:2]
  scale = size / min(h, w)
  nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
  pil = Image.fromarray(image.astype(np.uint8)).resize((nw, nh), Image.BICUBIC)
  top, left = (nh - size) // 2, (nw - size) // 2
  out = np.asarray(pil, np.float32)[top:top + size, left:left + size]
  return out / 127.5 - 1.0


def iter_split(spec: dict, data_dir: str, image_size: int, max_images: int = 0,
               batch_size: int = 64):
  """Batches (images (b, s, s, 3) float32, labels (b,)) of the spec's split, in file order."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  folder = prepared_dir(spec['tfds'], data_dir)
  if folder is None:
    raise FileNotFoundError(f"{spec['tfds']} is not prepared under {data_dir}")
  builder = tfds.builder_from_directory(folder)
  num_classes = builder.info.features['label'].num_classes
  if num_classes != len(spec['classes']):
    raise ValueError(f"{folder}: {num_classes} labels, but the suite names "
                     f"{len(spec['classes'])} classes for {spec['tfds']}")
  split = spec['split'] if not max_images else f"{spec['split']}[:{max_images}]"
  images, labels = [], []
  for example in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)):
    images.append(center_crop(example['image'], image_size))
    labels.append(int(example['label']))
    if len(images) == batch_size:
      yield np.stack(images), np.asarray(labels, np.int64)
      images, labels = [], []
  if images:
    yield np.stack(images), np.asarray(labels, np.int64)


def read_split(spec: dict, data_dir: str, image_size: int, max_images: int = 0):
  """(images (n, s, s, 3) float32, labels (n,)) of the spec's split, in the file order."""
  parts = list(iter_split(spec, data_dir, image_size, max_images))
  return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def predict_all(predict: Predict, params, images, batch_size: int) -> np.ndarray:
  out = [np.asarray(predict(params, images[i:i + batch_size]))
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out)


def classify(predict: Predict, encode: Encode, params, images, labels, class_names, templates,
             batch_size: int = 64) -> dict:
  """zeroshot_top1 (and top5 with >= 5 classes) of prompt-ensembled class queries."""
  return score_classes(predict_all(predict, params, images, batch_size), labels, encode,
                       class_names, templates)


def score_classes(preds, labels, encode: Encode, class_names, templates) -> dict:
  queries = zeroshot.class_queries(encode, class_names, templates)
  scores = zeroshot.similarity(preds, queries)
  return dict(zeroshot.topk_accuracy(scores, labels), num_images=int(len(labels)))


def retrieve(predict: Predict, encode: Encode, params, images, captions, caption_image,
             batch_size: int = 64) -> dict:
  """Image<->text recall@1/5/10 (captions[j] describes images[caption_image[j]]), for
  captioned sets such as COCO's or Flickr30k's test images."""
  text = np.asarray(encode(list(captions)))
  scores = zeroshot.similarity(predict_all(predict, params, images, batch_size), text)
  return zeroshot.retrieval_recalls(scores, caption_image)


def run_suite(predict: Predict, encode: Encode, params, *, datasets, data_dir: str,
              image_size: int, max_images: int = 0, batch_size: int = 64,
              specs: Optional[dict] = None) -> dict:
  """{dataset: metrics} for each named dataset prepared under data_dir; the others are
  recorded as skipped (a named dataset is never downloaded)."""
  specs = load_specs() if specs is None else specs
  results = {}
  for name in datasets:
    spec = specs[name]
    if prepared_dir(spec['tfds'], data_dir) is None:
      results[name] = {'skipped': f"{spec['tfds']} not prepared under {data_dir}"}
      logging.warning('zero-shot %s skipped: %s', name, results[name]['skipped'])
      continue
    preds, labels = [], []
    for images, batch_labels in iter_split(spec, data_dir, image_size, max_images, batch_size):
      preds.append(np.asarray(predict(params, images)))
      labels.append(batch_labels)
    results[name] = dict(score_classes(np.concatenate(preds), np.concatenate(labels), encode,
                                       spec['classes'], spec['templates']),
                         split=spec['split'], templates=len(spec['templates']))
    logging.info('zero-shot %s: %s', name, results[name])
  return results


def predict_pairs(predict: Predict, params, shards, image_size: int, max_pairs: int = 0,
                  batch_size: int = 64) -> dict:
  """Query estimates of the distinct images of caption shards (data/captions.py formats).

  Sets like COCO's store an image once per caption: images are told apart by the hash of their
  decoded pixels, so the captions of one picture all point to one row (caption_image) and
  i2t counts a hit when any of them ranks high. Every pair is read once (shards in
  CaptionRecords' fixed seed-0 order); `max_pairs` (0: all) caps the captions read. Bad
  records are skipped and counted.
  """
  records = CaptionRecords(list(shards), image_size=image_size, epochs=1)
  row_of, captions, caption_image, pending, preds = {}, [], [], [], []

  def flush():
    if pending:
      preds.append(np.asarray(predict(params, np.stack(pending))))
      pending.clear()

  for example in records:
    key = hashlib.sha1(example['image'].tobytes()).hexdigest()
    if key not in row_of:
      row_of[key] = len(row_of)
      pending.append(example['image'])
      if len(pending) == batch_size:
        flush()
    captions.append(example['caption'])
    caption_image.append(row_of[key])
    if len(captions) == max_pairs:
      break
  flush()
  if not captions:
    raise ValueError(f'no readable image-text pair in {len(records.shards)} retrieval shards '
                     f'(skipped: {dict(records.skipped)})')
  return {'preds': np.concatenate(preds), 'captions': captions,
          'caption_image': np.asarray(caption_image), 'skipped': dict(records.skipped)}


def evaluate_and_record(predict: Predict, encode: Encode, params, *, eval_config,
                        batch_size: int, image_size: int, workdir: str,
                        settings: Optional[dict] = None) -> dict:
  """The suite of `eval_config.zeroshot_datasets` to eval.json's 'zeroshot' section, and
  image<->text recall over `eval_config.retrieval_shards` to 'retrieval'; each section only
  when its input is named. `settings` (how `predict` works, the checkpoint step) is written
  into both. Returns the sections written.
  """
  ev = eval_config
  specs = load_specs()
  datasets = parse_datasets(ev.zeroshot_datasets, specs)
  sections = {}

  def write(name, value):  # at once: a failure in the next part keeps this one
    sections[name] = value
    if jax.process_index() == 0:  # every process computed the same numbers
      update_eval_json(workdir, name, value)

  if datasets:
    t0 = time.perf_counter()
    results = run_suite(predict, encode, params, datasets=datasets, data_dir=ev.tfds_data_dir,
                        image_size=image_size, max_images=ev.zeroshot_max_images,
                        batch_size=batch_size, specs=specs)
    write('zeroshot', {'datasets': results, 'settings': settings or {},
                       'tfds_data_dir': os.path.abspath(ev.tfds_data_dir),
                       'max_images': ev.zeroshot_max_images,
                       'seconds': round(time.perf_counter() - t0, 1)})
  if ev.retrieval_shards:
    t0 = time.perf_counter()
    shards = find_shards(ev.retrieval_shards)
    pairs = predict_pairs(predict, params, shards, image_size, ev.retrieval_max_pairs,
                          batch_size)
    text = np.asarray(encode(pairs['captions']))
    metrics = zeroshot.retrieval_recalls(zeroshot.similarity(pairs['preds'], text),
                                         pairs['caption_image'])
    write('retrieval', {'metrics': metrics, 'num_images': int(len(pairs['preds'])),
                        'num_captions': len(pairs['captions']),
                        'skipped_records': pairs['skipped'], 'shards': shards,
                        'settings': settings or {},
                        'seconds': round(time.perf_counter() - t0, 1)})
    logging.info('retrieval over %d images, %d captions: %s', len(pairs['preds']),
                 len(pairs['captions']), metrics)
  return sections
