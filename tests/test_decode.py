"""Decoding with the key/value cache is the model's own function: greedy tokens from the cache
equal the argmax of a full forward pass at every position, and the cached logits equal the
full pass's, on both attention paths that decode ('reference', 'xla'; models/attention.py says
why the fused kernels do not), with learned positions and RoPE, MHA and GQA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments.configs import default, modern
from models import decode
from models.transformer import ModelConfig, Transformer

PROMPT = np.array([[1, 2, 3, 4, 5], [9, 8, 7, 6, 5]])
NEW = 11


def build(config=default, **overrides) -> Transformer:
  m = config.get_config().model
  # A large init spreads the logits: no near-ties for float rounding to flip an argmax.
  m.update(dict(d_model=32, num_layers=2, num_heads=4, max_seq_len=32, init_std=0.3))
  m.update(overrides)
  return Transformer(ModelConfig.from_config(m, vocab_size=64), rngs=nnx.Rngs(0))


CASES = [
  dict(attention_impl=impl, pos_emb=pos, num_kv_heads=kv)
  for impl in ('reference', 'xla')
  for pos in ('learned', 'rope')
  for kv in (4, 2)
]


@pytest.mark.parametrize('opts', CASES, ids=lambda o: '-'.join(map(str, o.values())))
def test_greedy_decoding_with_the_cache_equals_the_full_forward_argmax(opts):
  model = build(**opts)
  gen = np.asarray(decode.generate(model, PROMPT, NEW))
  assert gen.shape == (2, NEW)
  full = jnp.asarray(np.concatenate([PROMPT, gen], axis=1))
  # Position P-1+i of the full pass predicts generated token i.
  want = np.asarray(jnp.argmax(model(full[:, :-1]), -1))[:, PROMPT.shape[1] - 1 :]
  np.testing.assert_array_equal(gen, want)
  assert len(np.unique(gen)) > 2  # not a constant sequence that any bug would also give


@pytest.mark.parametrize(
  'config,opts',
  [
    (default, dict(attention_impl='xla')),
    (default, dict(attention_impl='xla', scan_layers=True, num_kv_heads=1)),
    (modern, dict(attention_impl='reference', num_kv_heads=2)),
  ],
  ids=['learned-mha', 'scan-mqa', 'modern-gqa'],
)
def test_cached_logits_equal_the_full_pass_step_by_step(config, opts):
  """Prefill 5 tokens, then one token per call: every logit row as the whole sequence's."""
  model = build(config, **opts)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 64, (2, 12)))
  full = np.asarray(model(tokens))
  cache = model.init_cache(2, 16)  # more slots than used: the unused ones must not be seen
  step = jax.jit(lambda m, t, c, p: m.decode(t, c, p))
  logits, cache = step(model, tokens[:, :5], cache, jnp.int32(0))
  rows = [np.asarray(logits)]
  for pos in range(5, 12):
    logits, cache = step(model, tokens[:, pos : pos + 1], cache, jnp.int32(pos))
    rows.append(np.asarray(logits))
  np.testing.assert_allclose(np.concatenate(rows, axis=1), full, rtol=1e-4, atol=1e-4)


def test_sampling_respects_top_k_and_the_seed():
  model = build(attention_impl='xla')
  a = np.asarray(decode.generate(model, PROMPT, NEW, temperature=1.0, top_k=3, seed=1))
  b = np.asarray(decode.generate(model, PROMPT, NEW, temperature=1.0, top_k=3, seed=1))
  c = np.asarray(decode.generate(model, PROMPT, NEW, temperature=1.0, top_k=3, seed=2))
  np.testing.assert_array_equal(a, b)
  assert (a != c).any()
  # top_k=1 at any temperature is greedy decoding.
  greedy = np.asarray(decode.generate(model, PROMPT, NEW))
  top1 = np.asarray(decode.generate(model, PROMPT, NEW, temperature=5.0, top_k=1, seed=3))
  np.testing.assert_array_equal(top1, greedy)


def test_pick_draws_only_among_the_top_k():
  logits = jnp.log(jnp.array([[0.05, 0.4, 0.1, 0.3, 0.15]] * 4000))
  keys = jax.random.key(0)
  got = np.asarray(decode.pick(logits, keys, jnp.float32(1.0), greedy=False, top_k=2))
  assert set(np.unique(got)) == {1, 3}
  # Renormalized over the two kept tokens: 0.4 / 0.7 of the draws are token 1.
  assert abs(np.mean(got == 1) - 0.4 / 0.7) < 0.03
