"""Parameter and FLOP accounting, from abstract shapes only (nothing is allocated).

Parameters: `embedding` = token embedding + position table (+ the unembedding when untied);
`nonembedding` = everything else (attention, MLP, norms, biases), Kaplan et al.'s N. The count
is a sum over the model's own leaves, so every block option is counted as built (SwiGLU's three
matrices, no biases with use_bias=False, qk-norm scales); models/shapes.py's closed form is
checked against it for every combination (tests/test_blocks.py).

Training FLOPs per token: models/shapes.flops_per_token (PaLM's or Kaplan's formula) over the
non-embedding count found here. The attention term counts both attention matmuls (QK^T and AV)
over the full L x L square: causal masking is NOT credited as saved work, the convention MFU
figures in the literature use.
Hardware FLOPs with full rematerialization add one more forward pass: 4/3 of the model FLOPs.
"""

import jax
import numpy as np
from flax import nnx

from models.shapes import ModelConfig
from models.transformer import Transformer

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
  """Training FLOPs per token (see models/shapes.py for both conventions)."""
  return cfg.flops_per_token(param_counts(cfg)['nonembedding'], seq_len, convention)


def hardware_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
  """FLOPs actually executed per token: + one forward pass when blocks are recomputed."""
  model = flops_per_token(cfg, seq_len)
  return model * 4.0 / 3.0 if cfg.remat == 'full' else model
