"""The model's shape without JAX: its sizes, names and rules, the device mesh, closed-form counts.

`ModelConfig.from_config` is the one reader of `config.model`: it fills the derived sizes and
raises a one-line ValueError for any rule the shape breaks. The launchers, the sweep files, the
sweep planner and the PyTorch reference read this module without importing JAX; models/,
train/ and benchmarks/ use the same names and functions, so each rule is written once, here.

Shape letters, the one legend of the repository (array suffixes like `x_BxLxD`; two letters
run together, as in BL or HDh, are those axes flattened into one):
  B   batch (sequences)                 D   d_model (the residual stream's width)
  L   length: token positions           F   d_ff (the MLP's hidden width)
  L1  L + 1 positions (a row's inputs, and shifted by one its next-token targets)
  S   key/value positions (S = L in training; the kv cache's slots when decoding)
  H   query heads                       K   key/value heads (GQA; K = H is plain MHA)
  G   query heads per kv head, H // K   Dh  head_dim
  V   vocabulary                        Ly  layers (the stacked axis of scanned blocks)
A module that needs a letter of its own says so where it uses it (W: words, in
experiments/attention_words.py).

The sizes (`model.*`; 0 means "derive it"): head_dim = D // H, which H must then divide;
num_kv_heads = H, and K must divide H; d_ff = 4 D for GELU, for SwiGLU 8/3 D rounded up to a
multiple of 8 (`default_d_ff`); vocab_size from the tokenizer. RoPE rotates pairs of features,
so it needs an even head_dim. A fused attention kernel insisted on (`attention_impl` cudnn or
splash) exists on one platform only (KERNEL_PLATFORM); a model told its platform refuses the
other platforms, a model with platform '' (JAX's backend, looked up when it is traced) is not
checked here: train/validate.py checks it against the machine that trains.

Parameters of models/transformer.py, per layer: Q, K, V, O projections and their biases (K and
V have num_kv_heads heads), two norms, the MLP (two matrices for GELU, three for SwiGLU) and its
biases; plus the final norm. A LayerNorm has a scale and a bias, an RMSNorm a scale only;
use_bias=False removes every bias (projections and LayerNorms); qk_norm adds two norms of
head_dim per layer (queries and keys). Embedding parameters: the token table, the learned
position table (not with rope), and the unembedding when it is not tied. models/accounting.py
counts the same from the model's abstract shapes; tests/test_sweep.py and tests/test_blocks.py
check that the two agree.

Training FLOPs per token (forward + backward = 3x forward, 2 FLOPs per multiply-add):
* PaLM (Chowdhery et al. 2022, App. B): 6 * N_matmul + 12 * Ly * H * Dh * L, where N_matmul is
  the non-embedding parameters plus the unembedding matrix (the logits matmul costs 2*D*V per
  token even when tied; the input lookup costs nothing), attention over the full L x L square.
* Kaplan et al. 2020: 6 * N_nonembedding + 6 * Ly * L * d_attn.

Mesh: three axes (data, fsdp, tensor); one size may be -1, meaning "the devices left".
"""

import dataclasses
import math
from collections.abc import Mapping

# The names each `model.*` choice takes.
IMPLS = ('auto', 'reference', 'xla', 'cudnn', 'splash')  # attention_impl (models/kernels.py)
POS_EMBS = ('learned', 'rope')
REMATS = ('none', 'dots', 'full')  # from no recomputation to all of it
DTYPES = ('float32', 'bfloat16', 'float16')  # dtype (compute) and param_dtype
NORMS = ('layernorm', 'rmsnorm')
MLPS = ('gelu', 'swiglu')
PARAMETRIZATIONS = ('sp', 'mup')  # models/mup.py
# Model keys added after runs were saved without them: the block options and muP's. A saved
# config that lacks one had its default (GPT-3's block, SP), which ModelConfig holds.
LATER_KEYS = ('norm', 'mlp', 'use_bias', 'qk_norm', 'parametrization', 'mup_base_width')
# Where a model may be told it runs ('': JAX's backend, looked up when it is traced), and the
# one platform each fused kernel exists on.
PLATFORMS = ('', 'cpu', 'gpu', 'tpu')
KERNEL_PLATFORM = {'cudnn': 'gpu', 'splash': 'tpu'}


def choose(key: str, value, allowed) -> None:
  """`value` must be one of `allowed` (a one-line ValueError naming `key` otherwise)."""
  if value not in allowed:
    raise ValueError(f'{key}={value!r}; choose one of {allowed}')


def at_least_one(key: str, value: int) -> None:
  if value < 1:
    raise ValueError(f'model.{key} must be >= 1, got {value}')


def derive_head_dim(d_model: int, num_heads: int, head_dim: int = 0) -> int:
  """model.head_dim, or 0: d_model // num_heads, which num_heads must then divide."""
  if head_dim:
    return head_dim
  if d_model % num_heads:
    raise ValueError(
      f'model.num_heads={num_heads} does not divide model.d_model={d_model}; '
      'change one, or set model.head_dim explicitly'
    )
  return d_model // num_heads


def derive_kv_heads(num_heads: int, num_kv_heads: int = 0) -> int:
  """model.num_kv_heads, or 0: num_heads (plain multi-head attention); it must divide num_heads."""
  kv = num_kv_heads or num_heads
  if num_heads % kv:
    raise ValueError(f'model.num_kv_heads={kv} must divide model.num_heads={num_heads}')
  return kv


def default_d_ff(d_model: int, mlp: str = 'gelu') -> int:
  """model.d_ff=0: 4 d for GELU; for SwiGLU 8/3 d rounded up to a multiple of 8, so that its
  three matrices hold about the parameters of GELU's two (Shazeer 2020; Llama)."""
  return 4 * d_model if mlp == 'gelu' else 8 * math.ceil(8 * d_model / 3 / 8)


def check_rope(head_dim: int, d_model: int, num_heads: int) -> None:
  """RoPE rotates pairs of features (i, i + Dh/2): the head dimension must be even."""
  if head_dim % 2:
    raise ValueError(
      f'model.pos_emb=rope needs an even head dimension, got {head_dim} '
      f'(d_model={d_model} / num_heads={num_heads}); change one, or set model.head_dim'
    )


def check_kernel(attention_impl: str, platform: str) -> None:
  """A fused kernel insisted on must exist on `platform` ('': not checked here)."""
  choose('platform', platform, PLATFORMS)
  needs = KERNEL_PLATFORM.get(attention_impl)
  if needs and platform and platform != needs:
    raise ValueError(
      f'model.attention_impl={attention_impl} needs a {needs.upper()}, but the model runs '
      f'on {platform}; use auto (the fused kernel wherever it applies)'
    )


# The fields ModelConfig.from_config takes from the config as they are.
_GIVEN = ('d_model', 'num_layers', 'num_heads', 'max_seq_len', 'pos_emb', 'tie_embeddings')
_GIVEN += ('dtype', 'param_dtype', 'attention_impl', 'remat', 'scan_layers', 'init_std')


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Resolved model shape: every 0 ('derive it') of the config replaced by its value.

  Built by `from_config`, which checks every rule; models/transformer.py builds the model
  from it.
  """

  vocab_size: int
  d_model: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  d_ff: int
  max_seq_len: int
  pos_emb: str = 'learned'
  tie_embeddings: bool = True
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  attention_impl: str = 'auto'
  remat: str = 'none'
  scan_layers: bool = False
  init_std: float = 0.02
  # Block options (the defaults are GPT-3's block): 'layernorm' | 'rmsnorm' everywhere a
  # norm is; 'gelu' | 'swiglu' MLP; biases on every projection and LayerNorm; qk-norm.
  norm: str = 'layernorm'
  mlp: str = 'gelu'
  use_bias: bool = True
  qk_norm: bool = False
  parametrization: str = 'sp'  # 'sp' | 'mup' (models/mup.py)
  mup_base_width: int = 128  # muP: the width whose hyperparameters transfer (m = d_model / it)
  platform: str = ''  # '': the backend JAX runs on when the model is traced

  @property
  def width_mult(self) -> float:
    """muP's width multiplier m = d_model / mup_base_width (1 under SP: nothing is rescaled)."""
    if self.parametrization == 'sp':
      return 1.0
    return self.d_model / self.mup_base_width

  @classmethod
  def from_config(cls, m, vocab_size: int | None = None, platform: str = '') -> 'ModelConfig':
    """Checks `config.model` (a ConfigDict or a mapping) and fills the derived sizes; the
    vocabulary is model.vocab_size, else `vocab_size` (the tokenizer's), else 0 until
    `with_vocab` gives it (a model cannot be built with 0).

    `platform` ('cpu', 'gpu', 'tpu') is where the model will run, for a program lowered for
    another machine; '' (the default) means the backend JAX runs on, looked up when the model
    is traced, so that nothing here starts a backend (XLA_FLAGS are read when one starts).
    """
    vocab = m['vocab_size'] or 0  # 0: the tokenizer's, given here or later by with_vocab
    for key in ('d_model', 'num_layers', 'num_heads', 'max_seq_len'):
      at_least_one(key, m[key])
    head_dim = derive_head_dim(m['d_model'], m['num_heads'], m['head_dim'])
    kv = derive_kv_heads(m['num_heads'], m['num_kv_heads'])
    for key, allowed in (
      ('pos_emb', POS_EMBS),
      ('attention_impl', IMPLS),
      ('remat', REMATS),
      ('dtype', DTYPES),
      ('param_dtype', DTYPES),
    ):
      choose(f'model.{key}', m[key], allowed)
    later = {k: m.get(k, getattr(cls, k)) for k in LATER_KEYS}
    choose('model.norm', later['norm'], NORMS)
    choose('model.mlp', later['mlp'], MLPS)
    for key in ('use_bias', 'qk_norm'):
      if not isinstance(later[key], bool):
        raise ValueError(f'model.{key}={later[key]!r} must be True or False')
    choose('model.parametrization', later['parametrization'], PARAMETRIZATIONS)
    if later['parametrization'] == 'mup' and later['mup_base_width'] < 1:
      raise ValueError(
        f'model.mup_base_width must be >= 1 under muP, got {later["mup_base_width"]}'
      )
    check_kernel(m['attention_impl'], platform)
    if m['pos_emb'] == 'rope':
      check_rope(head_dim, m['d_model'], m['num_heads'])
    given = {k: m[k] for k in _GIVEN}
    return cls(
      **given,
      **later,
      vocab_size=int(vocab),
      num_kv_heads=kv,
      head_dim=head_dim,
      d_ff=m['d_ff'] or default_d_ff(m['d_model'], later['mlp']),
      platform=platform,
    ).with_vocab(vocab_size)

  def with_vocab(self, vocab_size: int | None) -> 'ModelConfig':
    """This shape with the tokenizer's vocabulary (None: not known yet, nothing changes);
    model.vocab_size, when set, must be the tokenizer's."""
    if not vocab_size:
      return self
    if self.vocab_size and self.vocab_size != vocab_size:
      raise ValueError(
        f'model.vocab_size={self.vocab_size} but the tokenizer has {vocab_size} tokens; '
        'set model.vocab_size=0 to take it from the tokenizer'
      )
    return dataclasses.replace(self, vocab_size=int(vocab_size))

  def flops_per_token(self, n_nonembed: int, seq_len: int, convention: str = 'palm') -> float:
    """Training FLOPs per token of this shape with `n_nonembed` parameters (module doc)."""
    dims = {k: getattr(self, k) for k in ('d_model', 'vocab_size', 'num_layers', 'num_heads')}
    return flops_per_token(
      n_nonembed, **dims, head_dim=self.head_dim, seq_len=seq_len, convention=convention
    )


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
