"""Captions for Fashion-MNIST: every caption, synonym and prompt split of the DiffDis
Fashion-MNIST recipe (configs/fmnist_diffdis.py) is defined here and nowhere else.

A caption is a template around one of its class's names:

    TEMPLATES['train'][1].format(**CLASS_WORDS[9][1])   # 'a grayscale product shot of a boot'

Each class has three names (`CLASS_WORDS`: the class word first, then two synonyms), each
as a bare word and as a noun phrase with its article ('ankle boot' / 'an ankle boot';
trousers come as 'a pair of trousers'). Templates use `{item}`, the phrase.

The templates are split in two:
  'train'    the captions DiffDis and its text encoder train on (each image draws one of
             its class's template x name combinations per epoch), and the zero-shot prompts
             of `zeroshot_top1`;
  'heldout'  prompts never seen in training: zero-shot with them alone is
             `zeroshot_top1_heldout`. They recombine training words in new orders and add
             words no training caption has ('this', 'is', 'catalogue', ...), so the text
             encoder meets unseen tokens as it would in the wild.
A text encoder trained from scratch cannot know a word it never saw, so every class name
appears in training captions (with every training template); `split_problems()` checks
both halves of the contract and the tests hold it to them.

    table = caption_table()                 # (10, train templates x 3) training captions
    class_prompts('heldout')                # per class, the held-out prompts (12 each)
    class_prompts('heldout', template=3)    # per class, 'this is {item}' around its 3 names
    sample_captions(labels, rng, 'heldout') # one seeded prompt per image
"""
from __future__ import annotations

import itertools
from typing import Optional

import numpy as np

from diffdis_jax.data import word_tokenizer
from diffdis_jax.data.fashion_mnist import NUM_CLASSES

NAME = 'fashion_mnist'


def _names(*phrases: str) -> tuple[dict[str, str], ...]:
  """('an ankle boot', ...) -> ({'word': 'ankle boot', 'item': 'an ankle boot'}, ...)."""
  out = []
  for phrase in phrases:
    _, _, word = phrase.partition(' ')  # drop the article
    if word.startswith('pair of '):
      word = word[len('pair of '):]
    out.append({'word': word, 'item': phrase})
  return tuple(out)


# per class, in label order: the class word first, then two synonyms
CLASS_WORDS = (
    _names('a t-shirt', 'a top', 'a tee'),
    _names('a pair of trousers', 'a pair of pants', 'a pair of jeans'),
    _names('a pullover', 'a sweater', 'a jumper'),
    _names('a dress', 'a gown', 'a frock'),
    _names('a coat', 'a jacket', 'an overcoat'),
    _names('a sandal', 'a flip-flop', 'an open shoe'),
    _names('a shirt', 'a blouse', 'a button-up shirt'),
    _names('a sneaker', 'a trainer', 'a running shoe'),
    _names('a bag', 'a handbag', 'a purse'),
    _names('an ankle boot', 'a boot', 'a bootie'),
)
CLASS_NAMES = tuple(words[0]['word'] for words in CLASS_WORDS)

TEMPLATES = {
    'train': (
        'a photo of {item}',
        'a grayscale product shot of {item}',
        'a picture of {item}',
        'an image of {item} on a black background',
        'a small photo of {item}',
        '{item} for sale',
    ),
    'heldout': (
        'a black and white photo of {item}',
        'a catalogue picture showing {item}',
        'a low resolution image of {item}',
        'this is {item}',
    ),
}
PROMPT_SETS = tuple(TEMPLATES)


def class_prompts(prompt_set: str = 'train', template: Optional[int] = None) -> list[list[str]]:
  """Per class, every template of `prompt_set` (or only its `template`-th) around every one
  of the class's names."""
  templates = TEMPLATES[prompt_set]
  if template is not None:
    templates = templates[template:template + 1]
  return [[t.format(**name) for t, name in itertools.product(templates, words)]
          for words in CLASS_WORDS]


def caption_table() -> np.ndarray:
  """(10, train templates x names) array of the training captions, row = class."""
  return np.array(class_prompts('train'))


def sample_captions(labels, rng: np.random.Generator, prompt_set: str = 'train') -> list[str]:
  """One prompt of `prompt_set` per label, drawn uniformly from its class's."""
  prompts = class_prompts(prompt_set)
  choice = rng.integers(0, len(prompts[0]), size=len(labels))
  return [prompts[int(c)][int(k)] for c, k in zip(labels, choice)]


def all_prompts() -> list[str]:
  return [p for s in PROMPT_SETS for per_class in class_prompts(s) for p in per_class]


def vocabulary() -> list[str]:
  """Every word of every prompt set: the held-out words are tokens too, but only the training
  captions ever train their embeddings."""
  return word_tokenizer.words_of(all_prompts())


# <|startoftext|> + the longest prompt + <|endoftext|>
MAX_LENGTH = 2 + max(len(word_tokenizer.pieces(p)) for p in all_prompts())


def build_tokenizer(folder: Optional[str] = None):
  """The word-level CLIPTokenizer of `vocabulary()` (data/word_tokenizer.py)."""
  return word_tokenizer.build_tokenizer(vocabulary(), folder)


def split_problems() -> list[str]:
  """What breaks the split's contract: a held-out prompt that is also a training caption, or
  a class name that no training caption contains. Empty when the split is sound."""
  problems = []
  train = set(caption_table().ravel())
  problems += [f'held-out prompt {p!r} is a training caption'
               for per_class in class_prompts('heldout') for p in per_class if p in train]
  for label, words in enumerate(CLASS_WORDS):
    row = caption_table()[label]
    problems += [f"class {label}'s name {w['word']!r} is in no training caption"
                 for w in words if not any(w['item'] in caption for caption in row)]
  if len(CLASS_WORDS) != NUM_CLASSES:
    problems.append(f'{len(CLASS_WORDS)} classes named, Fashion-MNIST has {NUM_CLASSES}')
  return problems
