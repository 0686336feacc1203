"""Attention read at the level of words: the analysis behind `launch.attention`.

Byte (or subword) attention is read per word: the weight that word i gives to word j is the
weight from the LAST token of word i (in a causal model, the one token that has read the
whole word) summed over the tokens of word j. Whitespace between words is its own column
(SPACE), so every row still sums to 1. Pure numpy except `word_maps`, which runs the model.
"""

import re

import numpy as np

SPACE = '(space)'


def words_of(text: str) -> list[tuple[str, int, int]]:
  """[(word, first byte, end byte)] of the whitespace-separated words of `text` (UTF-8)."""
  found = re.finditer(rb'\S+', text.encode('utf-8'))
  return [(m.group().decode('utf-8', 'replace'), m.start(), m.end()) for m in found]


def token_words(token_bytes: list[int], spans: list[tuple[str, int, int]]) -> np.ndarray:
  """The word index of every token (-1: whitespace), from each token's length in bytes.

  A token belongs to the word its first non-space byte falls in (SentencePiece pieces carry
  their leading space).
  """
  out, pos = [], 0
  text_end = spans[-1][2] if spans else 0
  for n in token_bytes:
    word = -1
    for j, (_, lo, hi) in enumerate(spans):
      if lo < pos + n and pos < hi:  # the token overlaps word j
        word = j
        break
    out.append(word)
    pos += n
  if pos < text_end:
    raise ValueError(f'tokens cover {pos} of the {text_end} bytes of the text')
  return np.array(out, int)


def word_attention(w_LxS: np.ndarray, word_of: np.ndarray, n_words: int) -> np.ndarray:
  """[n_words, n_words + 1]: from each word's last token, weight summed over each word's tokens.

  The last column is the weight on whitespace tokens; rows sum to what the token rows sum to.
  """
  out = np.zeros((n_words, n_words + 1))
  for i in range(n_words):
    q = np.flatnonzero(word_of == i)[-1]
    for j in range(-1, n_words):
      out[i, j] = w_LxS[q, word_of == j].sum()  # j = -1 is the last column
  return out


def normalize_word(word: str) -> str:
  return re.sub(r'[^\w]', '', word).lower()


def find_word(spans, word: str, what: str) -> int:
  """Index of the first word equal to `word` (case and punctuation ignored)."""
  names = [normalize_word(w) for w, _, _ in spans]
  key = normalize_word(word)
  if key not in names:
    text = ' '.join(w for w, *_ in spans)
    raise ValueError(f'{what} {word!r} is not a word of the text ({text})')
  return names.index(key)


def best_head(looks_LyxHxW: np.ndarray, target: int) -> dict:
  """The (layer, head) with the most weight on word `target`, and whether it prefers it.

  `looks_LyxHxW`: each head's weights from the query word over the words, W (letters:
  models/shapes.py; W the words, last column whitespace). 'prefers' is True when, in that
  head, no other word gets more weight.
  """
  on_target = looks_LyxHxW[:, :, target]
  layer, head = np.unravel_index(np.argmax(on_target), on_target.shape)
  words = looks_LyxHxW[layer, head, :-1]
  return {
    'layer': int(layer),
    'head': int(head),
    'weight': float(on_target[layer, head]),
    'prefers': bool(np.argmax(words) == target),
    'top_word': int(np.argmax(words)),
    'heads_preferring': int(np.sum(np.argmax(looks_LyxHxW[:, :, :-1], axis=-1) == target)),
  }


def word_maps(model, tokenizer, text: str):
  """(spans, [layers, heads, words, words + 1] word-level attention) of `text`."""
  import jax.numpy as jnp

  ids = tokenizer.encode(text.encode('utf-8'))[: model.cfg.max_seq_len]
  token_bytes = [len(tokenizer.decode(ids[: k + 1])) for k in range(len(ids))]
  token_bytes = np.diff([0, *token_bytes]).tolist()
  spans = [s for s in words_of(text) if s[2] <= sum(token_bytes)]
  word_of = token_words(token_bytes, spans)
  w_LyxBxHxLxS = np.asarray(model.attention_weights(jnp.asarray([ids], jnp.int32)), np.float64)
  n_layers, _, n_heads = w_LyxBxHxLxS.shape[:3]
  maps = np.array(
    [
      [word_attention(w_LyxBxHxLxS[l, 0, h], word_of, len(spans)) for h in range(n_heads)]
      for l in range(n_layers)
    ]
  )
  return spans, maps


def verdict(maps, spans, query: str, target: str, layers, heads, n_params: int) -> str:
  q, t = find_word(spans, query, '--query'), find_word(spans, target, '--target')
  if t >= q:
    return f'{target!r} does not come before {query!r}: a causal model cannot look at it'
  looks = maps[np.ix_(layers, heads)][:, :, q, :]
  b = best_head(looks, t)
  layer, head = layers[b['layer']], heads[b['head']]
  chance = 1 / (q + 1)
  share = (spans[t][2] - spans[t][1]) / spans[q][2]  # a long word collects more byte weight
  line = (
    f'most weight on {target!r} from {query!r}: layer {layer} head {head}, '
    f'{b["weight"]:.2f} (uniform over the {q + 1} words so far: {chance:.2f}; '
    f'{target!r} is {share:.2f} of the bytes so far)'
  )
  if b['prefers']:
    return line + f'; {b["heads_preferring"]} head(s) put more weight on it than on any other word'
  top = spans[b['top_word']][0]
  return (
    line + f'. No head puts more weight on {target!r} than on every other word (that head '
    f'prefers {top!r}): at this scale ({n_params:,} parameters, trained on bytes) no head '
    'resolves the reference.'
  )


# -- The command line's checks and the trained model ---------------------------------------


def select(values: list[str], count: int, what: str) -> list[int]:
  """Indices from a --layers/--heads list, checked against `count`; empty: all."""
  if not values:
    return list(range(count))
  try:
    idx = [int(v) for v in values]
  except ValueError:
    raise ValueError(f'--{what} takes integers, got {",".join(values)}') from None
  bad = [i for i in idx if not 0 <= i < count]
  if bad:
    raise ValueError(f'--{what}={",".join(values)}: the model has {what} 0..{count - 1}')
  return idx
