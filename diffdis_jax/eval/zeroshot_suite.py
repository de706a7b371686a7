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
For DiffDis, `predict` encodes the images with the VAE and runs `zeroshot.make_query_predictor`;
`evaluate_diffdis` below is the function `--mode=eval` calls for method=diffdis.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from typing import Callable, Optional

import numpy as np
from PIL import Image

from diffdis_jax.eval import zeroshot

SPECS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'zeroshot_classes.json')
Predict = Callable[..., np.ndarray]
Encode = Callable[[list], np.ndarray]


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


def read_split(spec: dict, data_dir: str, image_size: int, max_images: int = 0):
  """(images (n, s, s, 3) float32, labels (n,)) of the spec's split, in the file order."""
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
  return np.stack(images), np.asarray(labels, np.int64)


def predict_all(predict: Predict, params, images, batch_size: int) -> np.ndarray:
  out = [np.asarray(predict(params, images[i:i + batch_size]))
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out)


def classify(predict: Predict, encode: Encode, params, images, labels, class_names, templates,
             batch_size: int = 64) -> dict:
  """zeroshot_top1 (and top5 with >= 5 classes) of prompt-ensembled class queries."""
  queries = zeroshot.class_queries(encode, class_names, templates)
  scores = zeroshot.similarity(predict_all(predict, params, images, batch_size), queries)
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
    images, labels = read_split(spec, data_dir, image_size, max_images)
    results[name] = dict(classify(predict, encode, params, images, labels, spec['classes'],
                                  spec['templates'], batch_size),
                         split=spec['split'], templates=len(spec['templates']))
    logging.info('zero-shot %s: %s', name, results[name])
  return results


def evaluate_diffdis(predict: Predict, encode: Encode, params, config, workdir: str,
                     image_size: int) -> dict:
  """The DiffDis hook of `--mode=eval`: the suite of `eval.zeroshot_datasets` to eval.json's
  'zeroshot' section.

  How it plugs in (the DiffDis trainer wires it): with the restored params, a jitted
  `make_query_predictor(model, config)` and the VAE,
      predict = lambda p, images: query_predictor(p, vae_encode(images), null_context, rng)
      encode  = lambda texts: text queries of the CLIP text encoder (data preparation's `e`)
      zeroshot_suite.evaluate_diffdis(predict, encode, params, config, workdir, 512)
  """
  from diffdis_jax.eval.evaluate import update_eval_json  # pylint: disable=g-import-not-at-top
  e = config.eval
  specs = load_specs()
  results = run_suite(predict, encode, params, datasets=parse_datasets(e.zeroshot_datasets, specs),
                      data_dir=e.tfds_data_dir, image_size=image_size,
                      max_images=e.zeroshot_max_images, specs=specs)
  update_eval_json(workdir, 'zeroshot', results)
  return results
