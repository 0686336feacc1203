"""Parameter and FLOP accounting, from abstract shapes only (nothing is allocated).

Parameters: `embedding` = token embedding + position table (+ the unembedding when untied);
`nonembedding` = everything else (attention, MLP, norms, biases), Kaplan et al.'s N.

Training FLOPs per token (forward + backward = 3x forward, 2 FLOPs per multiply-add):
* PaLM (Chowdhery et al. 2022, App. B): 6 * N_matmul + 12 * L * H * Dh * T, where N_matmul is
  the non-embedding parameters plus the unembedding matrix (the logits matmul costs 2*D*V per
  token even when tied; the input embedding is a lookup and costs nothing). The attention term
  counts both attention matmuls (QK^T and AV) over the full T x T square: causal masking is
  NOT credited as saved work, the convention MFU figures in the literature use.
* Kaplan et al. 2020: 6 * N_nonembedding + 6 * L * T * d_attn (their C = 6N with the context
  term of their Table 1).
Hardware FLOPs with full rematerialization add one more forward pass: 4/3 of the model FLOPs.
"""

import jax
import numpy as np
from flax import nnx

from models.transformer import ModelConfig, Transformer

_EMBEDDING_NAMES = ('embed_VxD', 'pos_LxD', 'unembed_DxV')


def param_counts(cfg: ModelConfig) -> dict[str, int]:
  """{'total', 'embedding', 'nonembedding'} parameter counts of the model `cfg` describes."""
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  state = nnx.state(abstract, nnx.Param)
  total = embedding = 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    n = int(np.prod(leaf.shape))
    total += n
    if any(getattr(k, 'key', None) in _EMBEDDING_NAMES for k in path[:1]):
      embedding += n
  return {'total': total, 'embedding': embedding, 'nonembedding': total - embedding}


def flops_per_token(cfg: ModelConfig, seq_len: int, convention: str = 'palm') -> float:
  """Training FLOPs per token (see the module docstring for both conventions)."""
  n_nonembed = param_counts(cfg)['nonembedding']
  d_attn = cfg.num_heads * cfg.head_dim
  if convention == 'palm':
    n_matmul = n_nonembed + cfg.d_model * cfg.vocab_size
    return 6.0 * n_matmul + 12.0 * cfg.num_layers * d_attn * seq_len
  if convention == 'kaplan':
    return 6.0 * n_nonembed + 6.0 * cfg.num_layers * seq_len * d_attn
  raise ValueError(f'unknown FLOP convention {convention!r}; use palm or kaplan')


def hardware_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """FLOPs actually executed per token: + one forward pass when blocks are recomputed."""
  model = flops_per_token(cfg, seq_len)
  return model * 4.0 / 3.0 if cfg.remat == 'full' else model
