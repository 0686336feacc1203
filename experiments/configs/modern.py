"""A modern decoder block on default.py's setup: RMSNorm, SwiGLU, no biases, RoPE, qk-norm.

The block of most scaling work since 2023 (PaLM, Llama; qk-norm as in Dehghani et al. 2023
and Wortsman et al. 2023): RMSNorm everywhere a norm is, a SwiGLU MLP (d_ff = 8/3 d_model,
rounded up to a multiple of 8, so the MLP keeps GELU's parameters), no bias anywhere, rotary
positions instead of a learned table, queries and keys normalized per head before the dot.
Everything else (data, optimizer, batch, schedule) is default.py's; override as usual, e.g.
`--config=experiments/configs/modern.py --config.model.d_model=256`.
"""

import ml_collections

from experiments.configs import default


def get_config() -> ml_collections.ConfigDict:
  c = default.get_config()
  c.model.update(
    dict(norm='rmsnorm', mlp='swiglu', use_bias=False, pos_emb='rope', qk_norm=True, d_ff=0)
  )
  return c
