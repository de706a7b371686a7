"""A word-level CLIP tokenizer for a small, known vocabulary (the CPU demos' captions).

transformers' own `CLIPTokenizer`, loaded from a vocab.json / merges.txt written here: every
word of the vocabulary is one token (its BPE merges spell it out letter by letter), and
anything else falls back to single characters. Token ids 0 and 1 are <|startoftext|> and
<|endoftext|> (also the padding), so `CLIPTextModel(eos_token_id=1)` pools at the first
end-of-text token.

    tok = build_tokenizer(words)                    # or build_tokenizer(words, folder)
    ids, mask = captions.tokenize(tok, texts, max_length)
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from typing import Optional, Sequence

BOS, EOS = '<|startoftext|>', '<|endoftext|>'
END_OF_WORD = '</w>'
# characters any text may fall back to (lower-case: the tokenizer lower-cases first)
FALLBACK_CHARS = 'abcdefghijklmnopqrstuvwxyz0123456789.,!?\'-'


# CLIP's pre-tokenizer splits text into letter runs, single digits and punctuation runs
# ('t-shirt' -> 't', '-', 'shirt') before BPE; the vocabulary's words are those pieces
PIECES = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_")


def pieces(text: str) -> list[str]:
  """`text` lower-cased and split as CLIP's tokenizer splits it before BPE."""
  return PIECES.findall(text.lower())


def words_of(texts: Sequence[str]) -> list[str]:
  """The sorted distinct pieces (`pieces`) of `texts`: each becomes one token."""
  return sorted({w for text in texts for w in pieces(text)})


def vocab_and_merges(words: Sequence[str]) -> tuple[dict[str, int], list[str]]:
  """A BPE vocabulary in which each of `words` is a single token.

  Single characters (alone and word-final, with '</w>') come first, then each word's merges
  left to right: 's e', 'se v', 'sev e', 'seve n</w>' make 'seven</w>'. tokenizers requires
  every merge result to be in the vocabulary, so the prefixes are tokens too. BPE applies the
  best-ranked merge anywhere in a word first, so another word's merge can cut a chain ('c a'
  of 'catalogue' inside 'grayscale'); such a word gets merges of the pieces it ends in,
  ranked last, which cannot change any word that is already one token.
  """
  vocab = {BOS: 0, EOS: 1}
  merges: list[str] = []

  def add(token):
    if token not in vocab:
      vocab[token] = len(vocab)

  def chain(symbols):
    while len(symbols) > 1:
      rule = f'{symbols[0]} {symbols[1]}'
      if rule not in merges:
        merges.append(rule)
      add(symbols[0] + symbols[1])
      symbols = [symbols[0] + symbols[1]] + symbols[2:]

  def symbols_of(word):
    return list(word[:-1]) + [word[-1] + END_OF_WORD]

  for ch in FALLBACK_CHARS:
    add(ch)
    add(ch + END_OF_WORD)
  for word in words:
    for ch in symbols_of(word):
      add(ch)
    chain(symbols_of(word))
  for _ in range(len(words)):
    ranks = {tuple(rule.split(' ')): r for r, rule in enumerate(merges)}
    cut = [pieces_ for pieces_ in (_bpe(symbols_of(w), ranks) for w in words)
           if len(pieces_) > 1]
    if not cut:
      break
    for pieces_ in cut:
      chain(pieces_)
  return vocab, merges


def _bpe(symbols: list[str], ranks: dict) -> list[str]:
  """The pieces BPE leaves of `symbols`: the best-ranked adjacent pair merged, everywhere it
  occurs, until no pair has a merge."""
  while len(symbols) > 1:
    pairs = {(a, b) for a, b in zip(symbols, symbols[1:]) if (a, b) in ranks}
    if not pairs:
      break
    best = min(pairs, key=ranks.get)
    out, i = [], 0
    while i < len(symbols):
      if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
        out.append(symbols[i] + symbols[i + 1])
        i += 2
      else:
        out.append(symbols[i])
        i += 1
    symbols = out
  return symbols


def write_tokenizer_files(folder: str, words: Sequence[str]) -> str:
  """Write vocab.json and merges.txt for `words` into `folder`."""
  vocab, merges = vocab_and_merges(words)
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, 'vocab.json'), 'w') as f:
    json.dump(vocab, f)
  with open(os.path.join(folder, 'merges.txt'), 'w') as f:
    f.write('#version: 0.2\n' + '\n'.join(merges) + '\n')
  return folder


def build_tokenizer(words: Sequence[str], folder: Optional[str] = None):
  """transformers' CLIPTokenizer over `words`.

  Loaded with `from_pretrained(folder)`, the way SD folders load theirs (transformers 5.x
  ignores a `vocab_file=` keyword). Without `folder` the files live in a temporary directory
  only while loading.
  """
  from transformers import CLIPTokenizer  # pylint: disable=g-import-not-at-top
  if folder is not None:
    return CLIPTokenizer.from_pretrained(write_tokenizer_files(folder, words))
  with tempfile.TemporaryDirectory() as tmp:
    return CLIPTokenizer.from_pretrained(write_tokenizer_files(tmp, words))
