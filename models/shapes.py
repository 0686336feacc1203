"""Sizes that need no JAX: the device mesh's shape and the model's closed-form counts.

The launchers (a laptop, a login node) and the sweep files read these without importing JAX;
train/sharding.py and models/accounting.py use the same functions, so each rule exists once.

Mesh: three axes (data, fsdp, tensor); one size may be -1, meaning "the devices left".

Parameters of models/transformer.py, per layer: Q, K, V, O projections and their biases (K and
V have num_kv_heads heads), two norms, the MLP (two matrices for GELU, three for SwiGLU) and its
biases; plus the final norm. A LayerNorm has a scale and a bias, an RMSNorm a scale only;
use_bias=False removes every bias (projections and LayerNorms); qk_norm adds two norms of
head_dim per layer (queries and keys). Embedding parameters: the token table, the learned
position table (not with rope), and the unembedding when it is not tied. models/accounting.py
counts the same from the model's abstract shapes; tests/test_sweep.py and tests/test_blocks.py
check that the two agree.

Training FLOPs per token (forward + backward = 3x forward, 2 FLOPs per multiply-add):
* PaLM (Chowdhery et al. 2022, App. B): 6 * N_matmul + 12 * L * H * Dh * T, where N_matmul is
  the non-embedding parameters plus the unembedding matrix (the logits matmul costs 2*D*V per
  token even when tied; the input lookup costs nothing), attention over the full T x T square.
* Kaplan et al. 2020: 6 * N_nonembedding + 6 * L * T * d_attn.
"""

import math
from collections.abc import Mapping

MESH_AXES = ('data', 'fsdp', 'tensor')


def mesh_shape(mesh: Mapping, num_devices: int, where: str = '') -> tuple[int, ...]:
  """(data, fsdp, tensor) sizes with a -1 filled in; one-line ValueError if they do not fit.

  `mesh` maps axis names to sizes (a dict or the config's ConfigDict); missing axes are 1.
  `where` names the devices in messages (e.g. 'v5p-32').
  """
  at = f' on {where}' if where else ''
  unknown = sorted(set(mesh.keys()) - set(MESH_AXES))
  if unknown:
    raise ValueError(f'unknown mesh axes {unknown}; the mesh axes are {MESH_AXES}')
  sizes = [int(mesh.get(a, 1)) for a in MESH_AXES]
  shown = dict(zip(MESH_AXES, sizes, strict=True))
  if sizes.count(-1) > 1:
    raise ValueError(f'at most one mesh axis may be -1, got {shown}')
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f'mesh sizes must be positive or -1, got {shown}')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if num_devices % known:
      raise ValueError(
        f'mesh {shown} cannot fill {num_devices} devices{at}: {known} does not divide {num_devices}'
      )
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise ValueError(
      f'mesh {shown} has {math.prod(sizes)} devices but {num_devices} are available{at}; '
      'make the product match or use -1 for one axis'
    )
  return tuple(sizes)


def default_d_ff(d_model: int, mlp: str = 'gelu') -> int:
  """model.d_ff=0: 4 d for GELU; for SwiGLU 8/3 d rounded up to a multiple of 8, so that its
  three matrices hold about the parameters of GELU's two (Shazeer 2020; Llama)."""
  return 4 * d_model if mlp == 'gelu' else 8 * math.ceil(8 * d_model / 3 / 8)


def param_counts(
  *,
  vocab_size: int,
  d_model: int,
  num_layers: int,
  num_heads: int,
  head_dim: int,
  d_ff: int,
  num_kv_heads: int = 0,
  max_seq_len: int = 0,
  pos_emb: str = 'learned',
  tie_embeddings: bool = True,
  norm: str = 'layernorm',
  mlp: str = 'gelu',
  use_bias: bool = True,
  qk_norm: bool = False,
) -> dict[str, int]:
  """{'total', 'embedding', 'nonembedding'} in closed form (num_kv_heads 0: = num_heads)."""
  d, f, dh = d_model, d_ff, head_dim
  q, kv = num_heads * dh, (num_kv_heads or num_heads) * dh
  per_norm = 2 if norm == 'layernorm' and use_bias else 1  # scale (+ bias) per feature
  attention = d * q + 2 * d * kv + q * d + use_bias * (q + 2 * kv + d)  # weights, biases
  attention += qk_norm * 2 * per_norm * dh
  matrices = 3 if mlp == 'swiglu' else 2  # SwiGLU: gate, up and down
  mlp_params = matrices * d * f + use_bias * ((matrices - 1) * f + d)
  norms = 2 * per_norm * d
  nonembed = num_layers * (attention + mlp_params + norms) + per_norm * d
  embed = vocab_size * d
  embed += max_seq_len * d if pos_emb == 'learned' else 0
  embed += 0 if tie_embeddings else d * vocab_size
  return {'total': nonembed + embed, 'embedding': embed, 'nonembedding': nonembed}


def flops_per_token(
  n_nonembed: int,
  *,
  d_model: int,
  vocab_size: int,
  num_layers: int,
  num_heads: int,
  head_dim: int,
  seq_len: int,
  convention: str = 'palm',
) -> float:
  """Training FLOPs per token (module doc) of a model with `n_nonembed` parameters."""
  d_attn = num_heads * head_dim
  if convention == 'palm':
    return 6.0 * (n_nonembed + d_model * vocab_size) + 12.0 * num_layers * d_attn * seq_len
  if convention == 'kaplan':
    return 6.0 * n_nonembed + 6.0 * num_layers * seq_len * d_attn
  raise ValueError(f'unknown FLOP convention {convention!r}; use palm or kaplan')
