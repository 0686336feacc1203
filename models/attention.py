"""Multi-head attention as the textbook describes it (shape letters: models/shapes.py).

Each token is projected to a query, a key and a value per head; scores are QK^T / sqrt(Dh);
a softmax (in float32) over the visible keys weights the values; the heads are concatenated
and projected back to D. Grouped-query attention shares each key/value head between
G = H // K query heads (K = 1 is multi-query attention).

The softmax(QK^T)V step has several implementations of the same function (model.attention_impl:
reference einsums, XLA, cuDNN, splash), all called from `attend` (the one call site of
`jax.nn.dot_product_attention`); models/kernels.py chooses among them and holds the kernels.

Decoding with a key/value cache (`MultiHeadAttention.decode`, `cached_attention`) runs on
'reference' or 'xla' only (DECODE_IMPLS; any other setting decodes with 'xla'): its queries
are the L new tokens and its keys the whole fixed-size cache, an L x S rectangle whose mask is
"key position <= query position", not the square causal L x L the fused kernels are built for
(the splash kernel's mask is a fixed CausalMask((L, L)); cuDNN's causal mode aligns the
top-left corners). At one query row per step the L x S scores are small anyway.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from models import kernels, shapes
from models.layers import RESIDUAL, add_bias, constrain, dense, norm, param

DECODE_IMPLS = ('reference', 'xla')


class MultiHeadAttention(nnx.Module):
  """Q/K/V projections, scaled dot-product attention per head, output projection."""

  def __init__(
    self,
    d_model: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    *,
    rngs: nnx.Rngs,
    impl: str = 'auto',
    platform: str = '',
    use_rope: bool = False,
    init_std: float = 0.02,
    out_init_std: float = 0.02,
    score_scale: float = 1.0,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    use_bias: bool = True,
    qk_norm: str = '',
  ):
    """`use_bias=False`: no Q/K/V/O biases. `qk_norm` ('' off, or 'layernorm'/'rmsnorm'):
    normalize each head's query and key over Dh before the dot (Dehghani et al. 2023,
    Wortsman et al. 2023), one scale (and bias) of Dh shared by the heads; before RoPE.
    `score_scale` multiplies the scores QK^T / sqrt(Dh) (muP: 1 / sqrt(Dh), for QK^T / Dh)."""
    shapes.derive_kv_heads(num_heads, num_kv_heads)
    if use_rope:
      shapes.check_rope(head_dim, d_model, num_heads)
    shapes.choose('attention_impl', impl, shapes.IMPLS)
    self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
    self.impl, self.platform, self.use_rope, self.dtype = impl, platform, use_rope, dtype
    self.score_scale = score_scale
    h, k, dh, d = num_heads, num_kv_heads, head_dim, d_model
    normal, zeros = nnx.initializers.normal(init_std), nnx.initializers.zeros
    self.wq_DxHxDh = param(rngs, normal, (d, h, dh), ('embed', 'heads', 'head_dim'), param_dtype)
    self.wk_DxKxDh = param(rngs, normal, (d, k, dh), ('embed', 'kv_heads', 'head_dim'), param_dtype)
    self.wv_DxKxDh = param(rngs, normal, (d, k, dh), ('embed', 'kv_heads', 'head_dim'), param_dtype)
    bias = lambda shape, axes: param(rngs, zeros, shape, axes, param_dtype) if use_bias else None  # noqa: E731
    self.bq_HxDh = bias((h, dh), ('heads', 'head_dim'))
    self.bk_KxDh = bias((k, dh), ('kv_heads', 'head_dim'))
    self.bv_KxDh = bias((k, dh), ('kv_heads', 'head_dim'))
    self.wo_HxDhxD = param(
      rngs,
      nnx.initializers.normal(out_init_std),
      (h, dh, d),
      ('heads', 'head_dim', 'embed'),
      param_dtype,
    )
    self.bo_D = bias((d,), ('embed',))
    kw = dict(rngs=rngs, param_dtype=param_dtype, use_bias=use_bias, axis='head_dim')
    self.q_norm = norm(qk_norm, dh, **kw) if qk_norm else None
    self.k_norm = norm(qk_norm, dh, **kw) if qk_norm else None

  def resolved_impl(self, length: int, segments: bool) -> str:
    """The implementation that runs for this length on the model's platform (logs why, once)."""
    impl, reason = kernels.choose_attention(
      self.impl,
      platform=self.platform or jax.default_backend(),
      dtype=jnp.dtype(self.dtype).name,
      head_dim=self.head_dim,
      length=length,
      segments=segments,
      capability=kernels.device_capability(),
    )
    kernels.log_once(reason)
    return impl

  def __call__(
    self,
    x_BxLxD: jax.Array,
    segment_ids_BxL: jax.Array | None = None,
    return_weights: bool = False,
  ) -> jax.Array | tuple[jax.Array, jax.Array]:
    length = x_BxLxD.shape[1]
    q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh = self.qkv(x_BxLxD, jnp.arange(length))

    weights_BxHxLxS = None
    if return_weights:  # for inspection: the reference path, which has the weights
      mask = causal_mask(segment_ids_BxL, length)
      out_BxLxHxDh, weights_BxHxLxS = reference_attention(q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask)
    else:
      impl = self.resolved_impl(length, segment_ids_BxL is not None)
      out_BxLxHxDh = attend(
        q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, segment_ids_BxL, impl, self.platform
      )
    out_BxLxD = self.out(out_BxLxHxDh)
    return (out_BxLxD, weights_BxHxLxS) if return_weights else out_BxLxD

  def qkv(self, x_BxLxD: jax.Array, positions_L: jax.Array):
    """Queries, keys and values of the tokens at `positions_L` (biases, qk-norm, RoPE)."""
    dt = self.dtype
    x_BxLxD = x_BxLxD.astype(dt)
    heads, kv_heads = ('batch', None, 'act_heads', None), ('batch', None, 'act_kv_heads', None)
    q_BxLxHxDh = add_bias(dense(x_BxLxD, self.wq_DxHxDh[...].astype(dt)), self.bq_HxDh, dt)
    k_BxSxKxDh = add_bias(dense(x_BxLxD, self.wk_DxKxDh[...].astype(dt)), self.bk_KxDh, dt)
    v_BxSxKxDh = add_bias(dense(x_BxLxD, self.wv_DxKxDh[...].astype(dt)), self.bv_KxDh, dt)
    if self.q_norm is not None:
      q_BxLxHxDh, k_BxSxKxDh = self.q_norm(q_BxLxHxDh), self.k_norm(k_BxSxKxDh)
    if self.use_rope:
      q_BxLxHxDh, k_BxSxKxDh = rope(q_BxLxHxDh, positions_L), rope(k_BxSxKxDh, positions_L)
    if self.score_scale != 1.0:  # every implementation below divides the scores by sqrt(Dh)
      q_BxLxHxDh = q_BxLxHxDh * jnp.asarray(self.score_scale, q_BxLxHxDh.dtype)
    q_BxLxHxDh = constrain(q_BxLxHxDh, heads)
    k_BxSxKxDh, v_BxSxKxDh = constrain(k_BxSxKxDh, kv_heads), constrain(v_BxSxKxDh, kv_heads)
    return q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh

  def out(self, out_BxLxHxDh: jax.Array) -> jax.Array:
    """Heads concatenated and projected back to D."""
    dt = self.dtype
    out_BxLxHxDh = constrain(out_BxLxHxDh, ('batch', None, 'act_heads', None))
    out_BxLxD = add_bias(dense(out_BxLxHxDh, self.wo_HxDhxD[...].astype(dt), 2), self.bo_D, dt)
    # Back on the residual stream's sharding: the all-reduce (or reduce-scatter) of B x L x D.
    return constrain(out_BxLxD, RESIDUAL)

  def decode(self, x_BxLxD: jax.Array, cache: dict, pos: jax.Array) -> tuple[jax.Array, dict]:
    """L new tokens at positions pos..pos+L-1 (prefill: L = the prompt; then L = 1): their
    keys and values are written into the fixed-size cache {'k', 'v': BxSxKxDh} at `pos`, and
    they attend to every slot up to their own position. Returns (output BxLxD, new cache)."""
    positions_L = pos + jnp.arange(x_BxLxD.shape[1])
    q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh = self.qkv(x_BxLxD, positions_L)
    at = (0, pos, 0, 0)
    cache = {
      'k': jax.lax.dynamic_update_slice(cache['k'], k_BxLxKxDh.astype(cache['k'].dtype), at),
      'v': jax.lax.dynamic_update_slice(cache['v'], v_BxLxKxDh.astype(cache['v'].dtype), at),
    }
    impl = self.impl if self.impl in DECODE_IMPLS else 'xla'
    out_BxLxHxDh = cached_attention(q_BxLxHxDh, cache['k'], cache['v'], positions_L, impl)
    return self.out(out_BxLxHxDh), cache


# ---------------------------------------------------------------------------------------------
# The implementations, behind one function.


def attend(
  q_BxLxHxDh: jax.Array,
  k_BxSxKxDh: jax.Array,
  v_BxSxKxDh: jax.Array,
  segment_ids_BxL: jax.Array | None,
  impl: str,
  platform: str = '',
) -> jax.Array:
  """Causal softmax(QK^T / sqrt(Dh)) V within segments, by a resolved implementation.

  `platform` ('': JAX's backend) decides whether splash is compiled for a TPU or interpreted.
  """
  length = q_BxLxHxDh.shape[1]
  if impl == 'reference':
    mask = causal_mask(segment_ids_BxL, length)
    return reference_attention(q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask)[0]
  if impl == 'splash':
    interpret = (platform or jax.default_backend()) != 'tpu'
    return kernels.splash_attention(q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, segment_ids_BxL, interpret)
  # 'xla' or 'cudnn'. Causality is is_causal (cuDNN skips the masked blocks); segment ids add
  # a B x 1 x L x S mask, which both combine with it.
  mask = None if segment_ids_BxL is None else segment_mask(segment_ids_BxL)
  return jax.nn.dot_product_attention(
    q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask=mask, is_causal=True, implementation=impl
  )


def cached_attention(
  q_BxLxHxDh: jax.Array,
  k_BxSxKxDh: jax.Array,
  v_BxSxKxDh: jax.Array,
  positions_L: jax.Array,
  impl: str,
) -> jax.Array:
  """Attention of L queries at `positions_L` over a cache of S key slots: query l sees slot s
  iff s <= positions_L[l] (slots past the newest token hold zeros and are never seen)."""
  s = k_BxSxKxDh.shape[1]
  mask_1x1xLxS = (jnp.arange(s)[None, :] <= positions_L[:, None])[None, None]
  if impl == 'reference':
    return reference_attention(q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask_1x1xLxS)[0]
  return jax.nn.dot_product_attention(
    q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask=mask_1x1xLxS, implementation='xla'
  )


def causal_mask(segment_ids_BxL: jax.Array | None, length: int) -> jax.Array:
  """Boolean [B or 1, 1, L, S] mask: query l sees key s iff s <= l (and same segment)."""
  mask_LxS = jnp.tril(jnp.ones((length, length), dtype=bool))
  return mask_LxS[None, None] & segment_mask(segment_ids_BxL)


def segment_mask(segment_ids_BxL: jax.Array | None) -> jax.Array:
  """Boolean [B, 1, L, S] mask: l and s lie in the same document (all True without ids)."""
  if segment_ids_BxL is None:
    return jnp.ones((1, 1, 1, 1), dtype=bool)
  return (segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :])[:, None]


def reference_attention(
  q_BxLxHxDh: jax.Array, k_BxSxKxDh: jax.Array, v_BxSxKxDh: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """softmax(QK^T / sqrt(Dh)) V with einsums; returns (output BxLxHxDh, weights BxHxLxS)."""
  b, length, h, dh = q_BxLxHxDh.shape
  k = k_BxSxKxDh.shape[2]
  q_BxLxKxGxDh = q_BxLxHxDh.reshape(b, length, k, h // k, dh)
  scores_BxKxGxLxS = jnp.einsum(
    'blkgd,bskd->bkgls', q_BxLxKxGxDh, k_BxSxKxDh, preferred_element_type=jnp.float32
  ) / jnp.sqrt(jnp.float32(dh))
  mask_Bx1x1xLxS = mask[:, :, None]
  # A large negative number rather than -inf keeps fully masked rows finite.
  scores_BxKxGxLxS = jnp.where(mask_Bx1x1xLxS, scores_BxKxGxLxS, -1e30)
  weights_BxKxGxLxS = jax.nn.softmax(scores_BxKxGxLxS, axis=-1)
  out_BxLxKxGxDh = jnp.einsum(
    'bkgls,bskd->blkgd', weights_BxKxGxLxS.astype(v_BxSxKxDh.dtype), v_BxSxKxDh
  )
  weights_BxHxLxS = weights_BxKxGxLxS.reshape(b, h, length, -1)
  return out_BxLxKxGxDh.reshape(b, length, h, dh), weights_BxHxLxS


def rope(x_BxLxHxDh: jax.Array, positions_L: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotary position embedding (Su et al. 2021), rotating pairs (i, i + Dh/2); H or K heads."""
  dh = x_BxLxHxDh.shape[-1]
  half = dh // 2
  freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles_LxHalf = positions_L[:, None].astype(jnp.float32) * freqs[None, :]
  sin = jnp.sin(angles_LxHalf)[None, :, None, :]
  cos = jnp.cos(angles_LxHalf)[None, :, None, :]
  x1, x2 = x_BxLxHxDh[..., :half].astype(jnp.float32), x_BxLxHxDh[..., half:].astype(jnp.float32)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxLxHxDh.dtype)
