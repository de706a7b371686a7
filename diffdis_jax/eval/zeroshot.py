"""Zero-shot classification and image-text retrieval scores from text-query estimates.

A model gives one (n, d) estimate per image (DiffDis: `diffdis_sampler.make_query_predictor`)
and one (n, d) query per text; everything here is on the host:

    queries = class_queries(encode, class_names, templates)    # encode: list[str] -> (n, d_y)
    queries = prompt_queries(encode, prompts)                  # prompts[c]: class c's texts
    scores  = similarity(predictions, queries)
    topk_accuracy(scores, labels); retrieval_recalls(scores, caption_image)

The same score matrix gives classification (argmax over classes) and retrieval R@K in both
directions.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def class_queries(encode: Callable[[list[str]], np.ndarray], class_names: Sequence[str],
                  templates: Sequence[str]) -> np.ndarray:
  """(classes, d_y) unit vectors: per class, the ensemble of its prompts, one per template
  (`template.format(name)`); see `prompt_queries`."""
  return prompt_queries(encode, [[t.format(name) for t in templates] for name in class_names])


def prompt_queries(encode: Callable[[list[str]], np.ndarray],
                   prompts: Sequence[Sequence[str]]) -> np.ndarray:
  """(classes, d_y) unit vectors: per class, the mean of the unit queries of its prompts,
  renormalised (CLIP's prompt ensembling); prompts[c] may name class c several ways."""
  out = []
  for per_class in prompts:
    e = np.asarray(encode(list(per_class)), np.float64)
    e = e / np.linalg.norm(e, axis=-1, keepdims=True)
    m = e.mean(0)
    out.append(m / np.linalg.norm(m))
  return np.stack(out).astype(np.float32)


def similarity(pred, queries) -> np.ndarray:
  """Cosine similarity (images, texts) on the host."""
  p = np.asarray(pred, np.float64)
  q = np.asarray(queries, np.float64)
  p = p / np.linalg.norm(p, axis=-1, keepdims=True)
  q = q / np.linalg.norm(q, axis=-1, keepdims=True)
  return p @ q.T


def topk_accuracy(scores, labels, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
  """{'zeroshot_top{k}': fraction of rows whose label is among the k highest scores}."""
  scores, labels = np.asarray(scores), np.asarray(labels)
  # rank of the true class: how many classes score strictly higher
  true = scores[np.arange(len(labels)), labels]
  rank = (scores > true[:, None]).sum(1)
  return {f'zeroshot_top{k}': float((rank < k).mean()) for k in ks if k <= scores.shape[1]}


def retrieval_recalls(scores, caption_image, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """Image->text and text->image recall@K from scores (images, captions).

  caption_image[j] is the index of the image caption j describes (several captions may share
  an image, as in COCO and Flickr30k). Image i counts as a hit at K when any of its captions
  ranks in the top K of row i; caption j when its image ranks in the top K of column j.
  A rank counts only strictly higher scores, so ties count for the hit: an image whose
  caption text also describes other images scores a hit however those captions rank.
  """
  scores = np.asarray(scores)
  caption_image = np.asarray(caption_image)
  n_img = scores.shape[0]
  txt = np.arange(len(caption_image))
  # i2t: rank of the image's best-scoring own caption within its row
  best = np.full((n_img,), -np.inf)
  np.maximum.at(best, caption_image, scores[caption_image, txt])
  i2t_rank = (scores > best[:, None]).sum(1)
  true = scores[caption_image, txt]
  t2i_rank = (scores > true[None, :]).sum(0)
  out = {}
  for k in ks:
    out[f'i2t_R@{k}'] = float((i2t_rank < k).mean())
    out[f't2i_R@{k}'] = float((t2i_rank < k).mean())
  return out
