"""Sampling from a trained Transformer with a key/value cache, all under one jit.

The prompt is run once (prefill: its keys and values fill the first P slots of a cache of
P + max_tokens slots), then one token per step (`jax.lax.scan`), each step writing its key and
value at its own position and attending to the slots before it (Transformer.decode). The cache
has a fixed size, so the whole generation is one compiled program per (prompt length,
max_tokens, top_k, greedy or not).

temperature 0 is greedy decoding (argmax); otherwise softmax(logits / temperature), restricted
to the top_k most likely tokens when top_k > 0.
"""

import functools

import jax
import jax.numpy as jnp
from flax import nnx


def pick(logits_BxV: jax.Array, key, temperature, *, greedy: bool, top_k: int) -> jax.Array:
  """The next token of each row: argmax, or a draw from the tempered (top-k) distribution."""
  if greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits_BxV = logits_BxV / temperature
  if top_k:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  return jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)


@functools.partial(jax.jit, static_argnames=('graphdef', 'max_tokens', 'greedy', 'top_k'))
def _generate(graphdef, state, prompt_BxP, key, temperature, *, max_tokens, greedy, top_k):
  model = nnx.merge(graphdef, state)
  b, p = prompt_BxP.shape
  cache = model.init_cache(b, p + max_tokens)
  keys = jax.random.split(key, max_tokens)
  choose = functools.partial(pick, temperature=temperature, greedy=greedy, top_k=top_k)
  logits_BxPxV, cache = model.decode(prompt_BxP, cache, jnp.int32(0))
  first_B = choose(logits_BxPxV[:, -1], keys[0])

  def step(carry, key):
    token_B, cache, pos = carry
    logits_Bx1xV, cache = model.decode(token_B[:, None], cache, pos)
    return (choose(logits_Bx1xV[:, 0], key), cache, pos + 1), token_B

  (last_B, _, _), tokens_TxB = jax.lax.scan(step, (first_B, cache, jnp.int32(p)), keys[1:])
  return jnp.concatenate([tokens_TxB.T, last_B[:, None]], axis=1)


def generate(
  model, prompt_BxP, max_tokens: int, *, temperature: float = 0.0, top_k: int = 0, seed: int = 0
) -> jax.Array:
  """B x max_tokens tokens that follow each prompt row (greedy when temperature is 0)."""
  graphdef, state = nnx.split(model)
  return _generate(
    graphdef,
    state,
    jnp.asarray(prompt_BxP, jnp.int32),
    jax.random.key(seed),
    jnp.float32(temperature or 1.0),
    max_tokens=max_tokens,
    greedy=temperature == 0,
    top_k=top_k,
  )
