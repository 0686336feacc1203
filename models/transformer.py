"""A decoder-only transformer (GPT-2/GPT-3 style) in Flax NNX (shape letters: models/shapes.py).

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
The model's shape, its defaults and its rules are models/shapes.py's ModelConfig.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from models import mup, shapes
from models.attention import MultiHeadAttention
from models.kernels import FUSED_PRIMITIVES
from models.layers import LOOKUP, RESIDUAL, LayerNorm, Mlp, RMSNorm, constrain, dense, norm, param
from models.shapes import ModelConfig

_DTYPES = {name: getattr(jnp, name) for name in shapes.DTYPES}


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
    if not cfg.vocab_size:
      raise ValueError('model.vocab_size is 0 and no tokenizer vocabulary was given')
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
