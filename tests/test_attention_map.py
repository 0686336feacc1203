"""launch.attention reads token attention as word attention, and says so honestly.

Oracles: a token matrix whose query row is all on one token of a known word gives exactly 1
on that word; a row-stochastic matrix stays row-stochastic after aggregation; SentencePiece
pieces (leading spaces) land in the same words as bytes do; a head that gives its most
weight to another word is never reported as the head that finds 'animal'.
"""

import json
import subprocess
import sys

import numpy as np
import pytest

from experiments import attention_words as attention
from tests.cluster import REPO

TEXT = "The animal didn't cross the street because it was too tired"


def _byte_words(text: str):
  spans = attention.words_of(text)
  return spans, attention.token_words([1] * len(text.encode()), spans)


def test_words_and_bytes():
  spans, word_of = _byte_words(TEXT)
  assert [w for w, *_ in spans][:3] == ['The', 'animal', "didn't"]
  assert word_of[:4].tolist() == [0, 0, 0, -1]  # 'The' then a space
  assert attention.find_word(spans, 'It', 'q') == 7  # case and punctuation ignored
  with pytest.raises(ValueError, match='not a word'):
    attention.find_word(spans, 'dog', '--query')


def test_subword_pieces_land_in_the_same_words_as_bytes():
  spans, by_bytes = _byte_words('the cat sat')
  pieces = ['the', ' c', 'at', ' sat']  # SentencePiece style: the space leads the piece
  by_pieces = attention.token_words([len(p) for p in pieces], spans)
  assert by_pieces.tolist() == [0, 1, 1, 2]
  # Every piece's word is the word of its non-space bytes.
  starts = np.cumsum([0] + [len(p) for p in pieces[:-1]])
  for k, p in enumerate(pieces):
    first = starts[k] + len(p) - len(p.lstrip())
    assert by_pieces[k] == by_bytes[first]


def test_all_weight_on_one_byte_of_animal_is_all_weight_on_animal():
  spans, word_of = _byte_words(TEXT)
  t = len(word_of)
  w = np.zeros((t, t))
  it_last = np.flatnonzero(word_of == 7)[-1]
  w[:, 0] = 1.0
  w[it_last, :] = 0.0
  w[it_last, np.flatnonzero(word_of == 1)[2]] = 1.0  # the 'i' of 'animal'
  words = attention.word_attention(w, word_of, len(spans))
  assert words[7, 1] == 1.0 and words[7].sum() == 1.0
  assert words[3, 0] == 1.0  # every other word: all on 'The'


def test_word_rows_keep_the_mass_of_token_rows():
  spans, word_of = _byte_words(TEXT)
  rng = np.random.default_rng(0)
  t = len(word_of)
  w = np.tril(rng.random((t, t)))
  w /= w.sum(axis=1, keepdims=True)
  words = attention.word_attention(w, word_of, len(spans))
  np.testing.assert_allclose(words.sum(axis=1), 1.0)
  assert np.allclose(np.triu(words[:, :-1], 1), 0)  # causal at the level of words too


def test_best_head_is_honest_when_no_head_prefers_the_target():
  spans, _ = _byte_words(TEXT)
  q, t = 7, 1
  maps = np.zeros((2, 2, len(spans), len(spans) + 1))
  maps[:, :, q, 6] = 0.6  # every head looks mostly at 'because'
  maps[:, :, q, t] = 0.1
  maps[1, 0, q, t] = 0.3  # this head likes 'animal' most, but 'because' still more
  maps[1, 0, q, 6] = 0.5
  b = attention.best_head(maps[:, :, q], t)
  assert (b['layer'], b['head'], b['prefers']) == (1, 0, False)
  text = attention.verdict(maps, spans, 'it', 'animal', [0, 1], [0, 1], 1000)
  assert 'No head' in text and "'because'" in text
  maps[1, 0, q, t] = 0.7
  b = attention.best_head(maps[:, :, q], t)
  assert b['prefers'] and b['heads_preferring'] == 1
  assert 'No head' not in attention.verdict(maps, spans, 'it', 'animal', [0, 1], [0, 1], 1000)


def test_word_maps_of_a_real_model_are_row_stochastic():
  from flax import nnx

  from data.tokenizer import ByteTokenizer
  from models.transformer import ModelConfig, Transformer

  cfg = ModelConfig(
    vocab_size=257,
    d_model=16,
    num_layers=2,
    num_heads=2,
    num_kv_heads=2,
    head_dim=8,
    d_ff=64,
    max_seq_len=128,
    attention_impl='reference',
  )
  with nnx.use_eager_sharding(False):
    model = Transformer(cfg, rngs=nnx.Rngs(0))
  spans, maps = attention.word_maps(model, ByteTokenizer(), TEXT)
  assert maps.shape == (2, 2, len(spans), len(spans) + 1)
  np.testing.assert_allclose(maps.sum(axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
  'args, match',
  [(['--layers=2'], 'layers 0..1'), (['--heads=0,5'], 'heads 0..3'), (['--query=dog'], 'dog')],
)
def test_bad_selection_is_one_line_before_loading(tmp_path, args, match):
  with open(tmp_path / 'config.json', 'w') as f:
    json.dump({'model': {'num_layers': 2, 'num_heads': 4}}, f)
  r = subprocess.run(
    [sys.executable, '-m', 'launch.attention', f'--workdir={tmp_path}', *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode == 2
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('error:') and match in lines[0], r.stderr
