"""The Fashion-MNIST caption set: the split's contract (no held-out prompt is a training
caption; every class name is in training captions) and its word-level tokenizer."""
import numpy as np
import pytest

from diffdis_jax.data import captions
from diffdis_jax.data import fashion_mnist_captions as fc
from diffdis_jax.data import word_tokenizer


@pytest.fixture(scope='module')
def tokenizer():
  return fc.build_tokenizer()


def test_no_heldout_prompt_is_a_training_caption():
  train = set(fc.caption_table().ravel())
  heldout = [p for per_class in fc.class_prompts('heldout') for p in per_class]
  assert len(heldout) == 10 * len(fc.TEMPLATES['heldout']) * 3
  assert not train & set(heldout)
  assert fc.split_problems() == []


def test_every_class_name_is_in_some_training_caption():
  table = fc.caption_table()
  assert table.shape == (10, len(fc.TEMPLATES['train']) * 3)
  train_words = set(word_tokenizer.words_of(table.ravel()))
  for label, names in enumerate(fc.CLASS_WORDS):
    for name in names:
      assert any(name['item'] in caption for caption in table[label]), name
      assert set(word_tokenizer.pieces(name['word'])) <= train_words, name
  assert table[9, 0] == 'a photo of an ankle boot'
  assert 'a grayscale product shot of a boot' in table[9]


def test_heldout_prompts_bring_words_training_never_saw():
  """The held-out set is a real test of the text side: new templates, some new words, and
  no class name among those new words."""
  train_words = set(word_tokenizer.words_of(fc.caption_table().ravel()))
  heldout_words = set(word_tokenizer.words_of(
      p for per_class in fc.class_prompts('heldout') for p in per_class))
  unseen = heldout_words - train_words
  assert unseen and {'this', 'catalogue'} <= unseen
  names = {w for words in fc.CLASS_WORDS for name in words
           for w in word_tokenizer.pieces(name['word'])}
  assert not unseen & names


def test_split_problems_find_a_leak(monkeypatch):
  """The checker can fail: a training template in the held-out set, or a class name that
  only held-out prompts use."""
  leaked = dict(fc.TEMPLATES, heldout=fc.TEMPLATES['heldout'] + (fc.TEMPLATES['train'][0],))
  monkeypatch.setattr(fc, 'TEMPLATES', leaked)
  assert any('is a training caption' in p for p in fc.split_problems())
  monkeypatch.undo()
  table = fc.caption_table()   # the training captions before a name is added
  renamed = list(fc.CLASS_WORDS)
  renamed[3] = renamed[3] + ({'word': 'sundress', 'item': 'a sundress'},)
  monkeypatch.setattr(fc, 'caption_table', lambda: table)
  monkeypatch.setattr(fc, 'CLASS_WORDS', tuple(renamed))
  assert any("'sundress' is in no training caption" in p for p in fc.split_problems())


def test_every_word_is_one_token_and_prompts_fit(tokenizer):
  prompts = fc.all_prompts()
  ids, mask = captions.tokenize(tokenizer, prompts, fc.MAX_LENGTH)
  assert ids.shape == (len(prompts), fc.MAX_LENGTH)
  assert mask.sum(1).max() == fc.MAX_LENGTH           # the longest prompt fills it exactly
  for text, row, m in zip(prompts, ids, mask):
    words = word_tokenizer.pieces(text)     # 'a t-shirt' -> 'a', 't', '-', 'shirt'
    n = len(words)
    assert m.sum() == n + 2
    assert tokenizer.convert_ids_to_tokens(row[1:n + 1].tolist()) == [w + '</w>' for w in words]


def test_sampled_captions_name_their_class():
  labels = np.repeat(np.arange(10), 100)
  for prompt_set in fc.PROMPT_SETS:
    caps = fc.sample_captions(labels, np.random.default_rng(0), prompt_set)
    prompts = fc.class_prompts(prompt_set)
    assert all(c in prompts[l] for c, l in zip(caps, labels))
    assert len(set(caps)) > 0.9 * sum(map(len, prompts))  # templates and synonyms vary
    assert caps == fc.sample_captions(labels, np.random.default_rng(0), prompt_set)



def test_heldout_template_scores_hand_case():
  """An encoder that reads held-out template 0 right and templates 1-3 as the next class:
  zero-shot with template 0 alone is perfect, with each other template alone 0; the held-out
  ensemble (3 right prompts, 9 wrong) has cosine 3 / sqrt(90) with the training one."""
  from diffdis_jax.eval import zeroshot  # pylint: disable=g-import-not-at-top
  from diffdis_jax.tasks.diffdis.sources import (  # pylint: disable=g-import-not-at-top
      CaptionedFashionMNIST)
  read_as = {}
  for c, prompts in enumerate(fc.class_prompts('train')):
    read_as.update({p: c for p in prompts})
  for i in range(len(fc.TEMPLATES['heldout'])):
    for c, prompts in enumerate(fc.class_prompts('heldout', i)):
      read_as.update({p: c if i == 0 else (c + 1) % 10 for p in prompts})
  encode = lambda texts: np.eye(10)[[read_as[t] for t in texts]]
  ensembles = {s: zeroshot.prompt_queries(encode, fc.class_prompts(s)) for s in fc.PROMPT_SETS}
  labels = np.arange(50) % 10
  scores = CaptionedFashionMNIST.heldout_template_scores(np.eye(10)[labels], labels, encode,
                                                         ensembles)
  assert scores['zeroshot_top1_heldout_t0'] == 1.0
  assert [scores[f'zeroshot_top1_heldout_t{i}'] for i in (1, 2, 3)] == [0.0, 0.0, 0.0]
  for stat in ('mean', 'min', 'max'):
    assert abs(scores[f'ensemble_cosine_{stat}'] - 3 / np.sqrt(90)) < 1e-6
