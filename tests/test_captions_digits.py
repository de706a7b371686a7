"""Captioned digits and the word-level CLIP tokenizer built from their vocabulary."""
import numpy as np
import pytest

from diffdis_jax.data import digits_captions as cd
from diffdis_jax.nn.clip_text import eos_positions


@pytest.fixture(scope='module')
def tokenizer():
  return cd.build_tokenizer()


def test_captions_and_vocabulary():
  table = cd.caption_table()
  assert table.shape == (10, len(cd.TEMPLATES))
  assert table[7, 0] == 'a handwritten digit seven' and table[7, 2] == 'a drawing of the digit 7'
  assert len(set(table.ravel())) == table.size
  vocab = cd.vocabulary()
  assert {'seven', '7', 'handwritten', 'image'} <= set(vocab)
  caps = cd.sample_captions([3, 3, 3, 3, 3, 3, 3, 3], np.random.default_rng(0))
  assert all('three' in c or '3' in c for c in caps) and len(set(caps)) > 1
  assert caps == cd.sample_captions([3] * 8, np.random.default_rng(0))  # seeded


def test_every_word_is_one_token(tokenizer):
  texts = list(cd.caption_table().ravel())
  ids, mask = cd.tokenize(tokenizer, texts)
  assert ids.shape == (len(texts), cd.MAX_LENGTH) and ids.dtype == np.int32
  assert tokenizer.bos_token_id == 0 and tokenizer.eos_token_id == 1
  for text, row, m in zip(texts, ids, mask):
    n = len(text.split())
    assert m.sum() == n + 2                        # <|startoftext|> words <|endoftext|>
    assert row[0] == 0 and row[n + 1] == 1 and np.all(row[n + 1:] == 1)
    words = tokenizer.convert_ids_to_tokens(row[1:n + 1].tolist())
    assert words == [w + '</w>' for w in text.split()]
  # the text encoder's pooling finds the first end-of-text token (eos_token_id=1)
  np.testing.assert_array_equal(eos_positions(ids, 1), mask.sum(1) - 1)


def test_unknown_words_fall_back_to_characters(tokenizer):
  ids, mask = cd.tokenize(tokenizer, ['Seven zebras', ''])
  tokens = tokenizer.convert_ids_to_tokens(ids[0, :mask[0].sum()].tolist())
  assert tokens[:2] == ['<|startoftext|>', 'seven</w>'] and tokens[-1] == '<|endoftext|>'
  assert ''.join(tokens[2:-1]) == 'zebras</w>'
  assert mask[1].sum() == 2                        # the empty prompt: bos, eos


def test_captioned_split(tmp_path):
  data = cd.load_captioned_digits('test', size=8, seed=1)
  assert data['image'].shape == (297, 8, 8, 1) and len(data['caption']) == 297
  assert all(cd.DIGIT_NAMES[l] in c or str(l) in c
             for l, c in zip(data['label'], data['caption']))
  tok = cd.build_tokenizer(str(tmp_path / 'tok'))
  assert (tmp_path / 'tok' / 'vocab.json').exists()
  assert cd.tokenize(tok, ['the number 7'])[0].shape == (1, cd.MAX_LENGTH)
