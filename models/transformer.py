"""A decoder-only transformer (GPT-2/GPT-3 style) in Flax NNX (shape letters: models/layers.py).

tokens -> token embedding (+ learned positions) -> Ly pre-norm blocks
(x + attn(ln(x)), then x + mlp(ln(x))) -> final norm -> logits (tied or untied unembedding).
The block is GPT-3's by default (LayerNorm, GELU MLP, biases); `model.norm`, `model.mlp`,
`model.use_bias` and `model.qk_norm` give a modern decoder's (RMSNorm, SwiGLU, no biases,
qk-norm). `decode` runs the same function on new tokens with a key/value cache.

With `scan_layers` the blocks are one stacked module (parameters with a leading layer axis)
applied by `jax.lax.scan`, so compile time does not grow with depth. `remat` recomputes
block activations in the backward pass ('full') or keeps only matmul outputs ('dots').
Activations are pinned to the mesh at block boundaries and inside attention and the MLP by
`models.layers.constrain` (a no-op unless the train step opens `activation_sharding`).
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from models import mup, shapes
from models.attention import (
  FUSED_PRIMITIVES,
  IMPLS,
  KERNEL_PLATFORM,
  PLATFORMS,
  MultiHeadAttention,
)
from models.layers import (
  LOOKUP,
  MLPS,
  NORMS,
  RESIDUAL,
  LayerNorm,
  Mlp,
  RMSNorm,
  constrain,
  dense,
  norm,
  param,
)

_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
BLOCK_OPTIONS = ('norm', 'mlp', 'use_bias', 'qk_norm')  # model.* keys; defaults: GPT-3's block


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Resolved model shape: every 0 ('derive it') of the config replaced by its value."""

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
    """muP's width multiplier m (1 under SP: nothing is rescaled)."""
    if self.parametrization == 'sp':
      return 1.0
    return mup.width_mult(self.d_model, self.mup_base_width)

  @classmethod
  def from_config(cls, m, vocab_size: int | None = None, platform: str = '') -> 'ModelConfig':
    """Validates `config.model` and fills derived sizes. Raises ValueError on bad shapes.

    `platform` ('cpu', 'gpu', 'tpu') is where the model will run, for a program lowered for
    another machine; '' (the default) means the backend JAX runs on, looked up when the model
    is traced, so that nothing here starts a backend (XLA_FLAGS are read when one starts).
    A fused attention kernel insisted on must exist on a given platform; for '' that is
    checked against the machine by train/validate.py.
    """
    vocab = m.vocab_size or vocab_size
    if not vocab:
      raise ValueError('model.vocab_size is 0 and no tokenizer vocabulary was given')
    if vocab_size and m.vocab_size and m.vocab_size != vocab_size:
      raise ValueError(
        f'model.vocab_size={m.vocab_size} but the tokenizer has {vocab_size} tokens; '
        'set model.vocab_size=0 to take it from the tokenizer'
      )
    for key in ('d_model', 'num_layers', 'num_heads', 'max_seq_len'):
      if m[key] < 1:
        raise ValueError(f'model.{key} must be >= 1, got {m[key]}')
    if not m.head_dim and m.d_model % m.num_heads:
      raise ValueError(
        f'model.num_heads={m.num_heads} does not divide model.d_model={m.d_model}; '
        'change one, or set model.head_dim explicitly'
      )
    kv = m.num_kv_heads or m.num_heads
    if m.num_heads % kv:
      raise ValueError(f'model.num_kv_heads={kv} must divide model.num_heads={m.num_heads}')
    choices = {
      'pos_emb': ('learned', 'rope'),
      'attention_impl': IMPLS,
      'remat': ('none', 'full', 'dots'),
      'dtype': tuple(_DTYPES),
      'param_dtype': tuple(_DTYPES),
    }
    # The block options may be missing from a run saved before they existed: the defaults.
    block = {k: m.get(k, getattr(cls, k)) for k in BLOCK_OPTIONS}
    for key, allowed in choices.items():
      if m[key] not in allowed:
        raise ValueError(f'model.{key}={m[key]!r}; choose one of {allowed}')
    for key, allowed in (('norm', NORMS), ('mlp', MLPS)):
      if block[key] not in allowed:
        raise ValueError(f'model.{key}={block[key]!r}; choose one of {allowed}')
    for key in ('use_bias', 'qk_norm'):
      if not isinstance(block[key], bool):
        raise ValueError(f'model.{key}={block[key]!r} must be True or False')
    # Configs saved before muP existed have neither key: they are SP.
    parametrization = m.get('parametrization', 'sp')
    base_width = m.get('mup_base_width', 128)
    if parametrization not in mup.PARAMETRIZATIONS:
      raise ValueError(
        f'model.parametrization={parametrization!r}; choose one of {mup.PARAMETRIZATIONS}'
      )
    if parametrization == 'mup' and base_width < 1:
      raise ValueError(f'model.mup_base_width must be >= 1 under muP, got {base_width}')
    if platform not in PLATFORMS:
      raise ValueError(f'platform={platform!r}; choose one of {PLATFORMS}')
    needs = KERNEL_PLATFORM.get(m.attention_impl)
    if needs and platform and platform != needs:
      raise ValueError(
        f'model.attention_impl={m.attention_impl} needs a {needs.upper()}, but the model runs '
        f'on {platform}; use auto (the fused kernel wherever it applies)'
      )
    return cls(
      vocab_size=int(vocab),
      d_model=m.d_model,
      num_layers=m.num_layers,
      num_heads=m.num_heads,
      num_kv_heads=kv,
      head_dim=m.head_dim or m.d_model // m.num_heads,
      d_ff=m.d_ff or shapes.default_d_ff(m.d_model, block['mlp']),
      max_seq_len=m.max_seq_len,
      pos_emb=m.pos_emb,
      tie_embeddings=m.tie_embeddings,
      dtype=m.dtype,
      param_dtype=m.param_dtype,
      attention_impl=m.attention_impl,
      remat=m.remat,
      scan_layers=m.scan_layers,
      init_std=m.init_std,
      **block,
      parametrization=parametrization,
      mup_base_width=base_width,
      platform=platform,
    )


def _norm(cfg: ModelConfig, rngs: nnx.Rngs):
  """The residual stream's norm (model.norm, model.use_bias)."""
  pdt = _DTYPES[cfg.param_dtype]
  return norm(cfg.norm, cfg.d_model, rngs=rngs, param_dtype=pdt, use_bias=cfg.use_bias)


class Block(nnx.Module):
  """Pre-norm transformer block: x + attn(ln1(x)), then x + mlp(ln2(x))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    dt, pdt = _DTYPES[cfg.dtype], _DTYPES[cfg.param_dtype]
    # GPT-2/3 scale the residual-output projections by 1/sqrt(2 * layers).
    out_std = cfg.init_std / math.sqrt(2 * cfg.num_layers)
    # muP: scores QK^T / Dh (models/mup.py); the kernels divide by sqrt(Dh) themselves.
    score_scale = 1.0 / math.sqrt(cfg.head_dim) if cfg.parametrization == 'mup' else 1.0
    self.ln1 = _norm(cfg, rngs)
    self.attn = MultiHeadAttention(
      cfg.d_model,
      cfg.num_heads,
      cfg.num_kv_heads,
      cfg.head_dim,
      rngs=rngs,
      impl=cfg.attention_impl,
      platform=cfg.platform,
      use_rope=cfg.pos_emb == 'rope',
      init_std=cfg.init_std,
      out_init_std=out_std,
      score_scale=score_scale,
      dtype=dt,
      param_dtype=pdt,
      use_bias=cfg.use_bias,
      qk_norm=cfg.norm if cfg.qk_norm else '',
    )
    self.ln2 = _norm(cfg, rngs)
    self.mlp = Mlp(
      cfg.d_model,
      cfg.d_ff,
      rngs=rngs,
      init_std=cfg.init_std,
      out_init_std=out_std,
      dtype=dt,
      param_dtype=pdt,
      kind=cfg.mlp,
      use_bias=cfg.use_bias,
    )

  def __call__(self, x_BxLxD: jax.Array, segment_ids_BxL: jax.Array | None) -> jax.Array:
    x_BxLxD = constrain(x_BxLxD, RESIDUAL)
    x_BxLxD = x_BxLxD + self.attn(self.ln1(x_BxLxD), segment_ids_BxL)
    return constrain(x_BxLxD + self.mlp(self.ln2(x_BxLxD)), RESIDUAL)

  def decode(self, x_BxLxD: jax.Array, cache: dict, pos: jax.Array) -> tuple[jax.Array, dict]:
    """The block on L new tokens at positions pos.., reading and extending its kv cache."""
    attn_BxLxD, cache = self.attn.decode(self.ln1(x_BxLxD), cache, pos)
    x_BxLxD = x_BxLxD + attn_BxLxD
    return x_BxLxD + self.mlp(self.ln2(x_BxLxD)), cache


def _dots_and_attention(prim, *args, **params) -> bool:
  """remat='dots': keep the outputs of matmuls without batch dimensions and of fused attention.

  A fused kernel is a custom call, not a dot: left to the dots policy its forward runs again in
  the backward pass. Naming its output (checkpoint_name) is not enough either, because the
  backward kernel also reads the softmax statistics, a residual inside the kernel's custom_vjp;
  so its primitive's outputs (output and statistics) are kept whole.
  """
  if prim.name in FUSED_PRIMITIVES:
    return True
  return jax.checkpoint_policies.dots_with_no_batch_dims_saveable(prim, *args, **params)


def _remat(fn, mode: str):
  if mode == 'full':
    return jax.checkpoint(fn)
  if mode == 'dots':
    return jax.checkpoint(fn, policy=_dots_and_attention)
  return fn


class Transformer(nnx.Module):
  """Decoder-only transformer returning float32 logits [B, L, vocab]."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    pdt = _DTYPES[cfg.param_dtype]
    normal = nnx.initializers.normal(cfg.init_std)
    self.embed_VxD = param(rngs, normal, (cfg.vocab_size, cfg.d_model), ('vocab', 'embed'), pdt)
    if cfg.pos_emb == 'learned':
      self.pos_LxD = param(rngs, normal, (cfg.max_seq_len, cfg.d_model), (None, 'embed'), pdt)
    if cfg.scan_layers:
      # One Block whose parameters have a leading Ly axis, each layer its own init.
      @nnx.split_rngs(splits=cfg.num_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0)
      def make_stacked(rngs: nnx.Rngs) -> Block:
        return Block(cfg, rngs=rngs)

      self.blocks = make_stacked(rngs)
    else:
      self.blocks = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.ln_f = _norm(cfg, rngs)
    if not cfg.tie_embeddings:
      self.unembed_DxV = param(rngs, normal, (cfg.d_model, cfg.vocab_size), ('embed', 'vocab'), pdt)
    if cfg.parametrization == 'mup':  # hidden matrices' init std / sqrt(m) (models/mup.py)
      mup.scale_hidden_init(self, cfg.width_mult)

  def __call__(self, tokens_BxL: jax.Array, segment_ids_BxL: jax.Array | None = None) -> jax.Array:
    cfg = self.cfg
    dt = _DTYPES[cfg.dtype]
    x_BxLxD = constrain(self.embed(tokens_BxL, dt), RESIDUAL)

    def block_fn(graph):
      def apply(state, x, segment_ids):
        return nnx.merge(graph, state)(x, segment_ids)

      return _remat(apply, cfg.remat)

    if cfg.scan_layers:
      graph, stacked_state = nnx.split(self.blocks)
      stacked_state = _cast_outside_norms(self.blocks, stacked_state, dt)
      apply = block_fn(graph)

      def body(x, layer_state):
        return apply(layer_state, x, segment_ids_BxL), None

      x_BxLxD, _ = jax.lax.scan(body, x_BxLxD, stacked_state)
    else:
      for block in self.blocks:
        graph, state = nnx.split(block)
        x_BxLxD = block_fn(graph)(state, x_BxLxD, segment_ids_BxL)

    return self.logits(x_BxLxD)

  def logits(self, x_BxLxD: jax.Array) -> jax.Array:
    """Final norm and unembedding: float32 logits BxLxV."""
    cfg = self.cfg
    x_BxLxD = self.ln_f(x_BxLxD)
    if cfg.parametrization == 'mup':  # the output multiplier 1/m (models/mup.py)
      x_BxLxD = x_BxLxD * jnp.asarray(1.0 / cfg.width_mult, x_BxLxD.dtype)
    unembed_DxV = self.embed_VxD[...].T if cfg.tie_embeddings else self.unembed_DxV[...]
    logits_BxLxV = unembed(x_BxLxD, unembed_DxV.astype(_DTYPES[cfg.dtype]))
    return constrain(logits_BxLxV, ('batch', 'act_length', 'act_vocab'))

  def init_cache(self, batch: int, length: int) -> dict:
    """An empty kv cache of `length` slots: {'k', 'v': Ly x B x S x K x Dh} in compute dtype."""
    cfg = self.cfg
    shape = (cfg.num_layers, batch, length, cfg.num_kv_heads, cfg.head_dim)
    zeros = jnp.zeros(shape, _DTYPES[cfg.dtype])
    return {'k': zeros, 'v': zeros}

  def decode(self, tokens_BxL: jax.Array, cache: dict, pos: jax.Array) -> tuple[jax.Array, dict]:
    """Logits of L new tokens at positions pos..pos+L-1 given the cache of the tokens before
    them, and the cache with theirs added (models/decode.py drives it; the same function as
    __call__ on the whole sequence, tested)."""
    cfg = self.cfg
    x_BxLxD = self.embed(tokens_BxL, _DTYPES[cfg.dtype], pos)
    if cfg.scan_layers:
      graph, stacked_state = nnx.split(self.blocks)

      def body(x, layer):
        state, k, v = layer
        x, c = nnx.merge(graph, state).decode(x, {'k': k, 'v': v}, pos)
        return x, (c['k'], c['v'])

      x_BxLxD, (k, v) = jax.lax.scan(body, x_BxLxD, (stacked_state, cache['k'], cache['v']))
      cache = {'k': k, 'v': v}
    else:
      ks, vs = [], []
      for i, block in enumerate(self.blocks):
        x_BxLxD, c = block.decode(x_BxLxD, {'k': cache['k'][i], 'v': cache['v'][i]}, pos)
        ks.append(c['k'])
        vs.append(c['v'])
      cache = {'k': jnp.stack(ks), 'v': jnp.stack(vs)}
    return self.logits(x_BxLxD), cache

  def embed(self, tokens_BxL: jax.Array, dtype, pos: jax.Array | int = 0) -> jax.Array:
    """Token embeddings plus learned positions (rope rotates inside attention instead)."""
    x_BxLxD = jnp.take(self.embed_VxD[...], tokens_BxL, axis=0).astype(dtype)
    # The rows come out split like the table's columns ('embed', over fsdp). Pinning that
    # layout first makes the move to the residual's (split by batch) one all-to-all; left to
    # itself XLA gathers the whole activation on meshes that mix fsdp with data and tensor.
    x_BxLxD = constrain(x_BxLxD, LOOKUP)
    if self.cfg.pos_emb == 'learned':
      rows_LxD = jax.lax.dynamic_slice_in_dim(self.pos_LxD[...], pos, tokens_BxL.shape[1])
      x_BxLxD = x_BxLxD + rows_LxD.astype(dtype)
    return x_BxLxD

  def attention_weights(self, tokens_BxL: jax.Array) -> jax.Array:
    """Attention weights of every layer and head, LyxBxHxLxS (for inspection)."""
    cfg = self.cfg
    x_BxLxD = self.embed(tokens_BxL, self.embed_VxD[...].dtype)
    blocks = (
      [nnx.merge(*_layer(self.blocks, i)) for i in range(cfg.num_layers)]
      if cfg.scan_layers
      else list(self.blocks)
    )
    weights = []
    for block in blocks:
      _, weights_BxHxLxS = block.attn(block.ln1(x_BxLxD), None, return_weights=True)
      weights.append(weights_BxHxLxS)
      x_BxLxD = block(x_BxLxD, None)
    return jnp.stack(weights)  # LyxBxHxLxS


def unembed(x_BxLxD: jax.Array, w_DxV: jax.Array) -> jax.Array:
  """float32 logits of x @ w, accumulated in float32.

  In bf16/fp16 compute the backward pass takes the logits' cotangent in the compute dtype: left
  to autodiff, preferred_element_type=float32 would make both vocabulary-sized backward matmuls
  float32 x float32 (TF32 on a GPU, at a fraction of the bf16 rate). Both still accumulate in
  float32; the forward, and so the loss, is the same bit for bit. In float32 this is plain dense.
  """
  if x_BxLxD.dtype == jnp.float32:
    return dense(x_BxLxD, w_DxV, out_dtype=jnp.float32)
  return _low_precision_logits(x_BxLxD, w_DxV)


@jax.custom_vjp
def _low_precision_logits(x_BxLxD, w_DxV):
  return dense(x_BxLxD, w_DxV, out_dtype=jnp.float32)


def _logits_fwd(x_BxLxD, w_DxV):
  return _low_precision_logits(x_BxLxD, w_DxV), (x_BxLxD, w_DxV)


def _logits_bwd(res, g_BxLxV):
  x_BxLxD, w_DxV = res
  g_BLxV = g_BxLxV.astype(x_BxLxD.dtype).reshape(-1, w_DxV.shape[1])
  dx_BLxD = jnp.dot(g_BLxV, w_DxV.T, preferred_element_type=jnp.float32)
  dw_DxV = jnp.dot(
    x_BxLxD.reshape(-1, w_DxV.shape[0]).T, g_BLxV, preferred_element_type=jnp.float32
  )
  return dx_BLxD.astype(x_BxLxD.dtype).reshape(x_BxLxD.shape), dw_DxV.astype(w_DxV.dtype)


_low_precision_logits.defvjp(_logits_fwd, _logits_bwd)


def _cast_outside_norms(blocks: nnx.Module, state: nnx.State, dtype) -> nnx.State:
  """The stacked layers' parameters in the compute dtype, cast once for all layers.

  Cast inside the scanned body, every layer's weights would be cast there (and again in the
  backward pass under remat); outside it is one cast of the stacked arrays, the same values.
  The norms' parameters (LayerNorm, RMSNorm, qk-norm) stay as they are: they compute in float32.
  """
  if dtype == jnp.float32:
    return state
  norms = {path for path, m in nnx.iter_graph(blocks) if isinstance(m, (LayerNorm, RMSNorm))}

  def cast(path, w):
    keys = tuple(getattr(k, 'key', None) for k in path)
    return w if any(keys[: len(n)] == n for n in norms) else w.astype(dtype)

  return jax.tree_util.tree_map_with_path(cast, state)


def _layer(stacked: Block, i: int):
  graph, state = nnx.split(stacked)
  return graph, jax.tree.map(lambda a: a[i], state)
