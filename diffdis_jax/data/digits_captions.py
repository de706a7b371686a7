"""scikit-learn's digits with captions, and a word-level CLIP tokenizer for their vocabulary.

The DiffDis demo pairs each digit image with a caption drawn from several templates ("a
handwritten digit seven", "the number 7", ...). Because the vocabulary is a few dozen words,
the tokenizer is word-level (data/word_tokenizer.py): every word is one token.

    tok = build_tokenizer()                           # or build_tokenizer(folder) to keep files
    ids, mask = tokenize(tok, ['a handwritten digit seven'], max_length=MAX_LENGTH)
    table = caption_table()                           # (10, templates) caption strings
    caps = sample_captions(labels, rng)               # one random template per image

Images and the train/test split are those of `data/digits.py`. `write_caption_shards` writes
the same pairs as webdataset tar shards, so they can also be read through the image-text
interface of real data (`captions.CaptionRecords(..., mode='L')`); the demo itself keeps
them in memory (`load_captioned_digits`), which is faster and exactly reproducible.
"""
from __future__ import annotations

import io
import os
import tarfile
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from diffdis_jax.data import captions, word_tokenizer
from diffdis_jax.data.digits import DIGIT_NAMES, NUM_CLASSES, load_digits

# {name}: the digit's word ("seven"); {digit}: the numeral ("7")
TEMPLATES = (
    'a handwritten digit {name}',
    'the number {name}',
    'a drawing of the digit {digit}',
    'a small picture of a {name}',
    'the handwritten number {digit}',
    'an image of the digit {name}',
)
# zero-shot candidates: class prompts, '{}' is the class name (eval/zeroshot.class_queries)
CLASS_TEMPLATES = ('a handwritten digit {}', 'the number {}', 'an image of the digit {}')
CLASS_NAMES = DIGIT_NAMES
MAX_LENGTH = 10          # <|startoftext|> + the longest caption (6 words) + <|endoftext|>, padded
NAME = 'digits'


def caption(label: int, template: int) -> str:
  return TEMPLATES[template].format(name=DIGIT_NAMES[label], digit=str(label))


def caption_table() -> np.ndarray:
  """(10, len(TEMPLATES)) array of every caption, row = class."""
  return np.array([[caption(c, t) for t in range(len(TEMPLATES))] for c in range(NUM_CLASSES)])


def sample_captions(labels, rng: np.random.Generator) -> list[str]:
  """One caption per label with a uniformly drawn template."""
  templates = rng.integers(0, len(TEMPLATES), size=len(labels))
  return [caption(int(c), int(t)) for c, t in zip(labels, templates)]


def class_prompts(heldout: bool = False) -> list[list[str]]:
  """The zero-shot candidates' prompts, a list per digit (CLASS_TEMPLATES around its name);
  the digits have no held-out prompt set."""
  if heldout:
    raise ValueError('the captioned digits have no held-out prompts')
  return [[t.format(name) for t in CLASS_TEMPLATES] for name in CLASS_NAMES]


def vocabulary() -> list[str]:
  """Sorted words of every caption and class prompt."""
  texts = list(caption_table().ravel())
  texts += [t.format(n) for t in CLASS_TEMPLATES for n in CLASS_NAMES]
  return word_tokenizer.words_of(texts)


def write_tokenizer_files(folder: str, words: Optional[Sequence[str]] = None) -> str:
  """vocab.json and merges.txt for `words` (default: `vocabulary()`) in `folder`."""
  return word_tokenizer.write_tokenizer_files(folder, vocabulary() if words is None else words)


def build_tokenizer(folder: Optional[str] = None):
  """The word-level CLIPTokenizer of `vocabulary()` (data/word_tokenizer.py)."""
  return word_tokenizer.build_tokenizer(vocabulary(), folder)


def tokenize(tokenizer, texts: Sequence[str], max_length: int = MAX_LENGTH):
  """`captions.tokenize` at the digits captions' length."""
  return captions.tokenize(tokenizer, texts, max_length)


def load_captioned_digits(split: str = 'train', size: int = 16, seed: int = 0) -> dict:
  """`load_digits` plus one seeded caption per image: {'image', 'label', 'caption'}."""
  data = load_digits(split, size)
  captions = sample_captions(data['label'], np.random.default_rng(seed))
  return dict(data, caption=np.array(captions))


def write_caption_shards(folder: str, split: str = 'train', size: int = 16, seed: int = 0,
                         per_shard: int = 500) -> list[str]:
  """`load_captioned_digits` as webdataset tars (NNNNNN.png, 8-bit grey, + NNNNNN.txt)."""
  data = load_captioned_digits(split, size, seed)
  pixels = np.round((data['image'][..., 0] + 1.0) * 127.5).astype(np.uint8)
  os.makedirs(folder, exist_ok=True)
  paths = []
  for start in range(0, len(pixels), per_shard):
    path = os.path.join(folder, f'digits-{split}-{start // per_shard:05d}.tar')
    with tarfile.open(path, 'w') as tar:
      for i in range(start, min(start + per_shard, len(pixels))):
        png = io.BytesIO()
        Image.fromarray(pixels[i], mode='L').save(png, 'PNG')
        for name, payload in ((f'{i:06d}.png', png.getvalue()),
                              (f'{i:06d}.txt', str(data['caption'][i]).encode())):
          info = tarfile.TarInfo(name)
          info.size = len(payload)
          tar.addfile(info, io.BytesIO(payload))
    paths.append(path)
  return paths
