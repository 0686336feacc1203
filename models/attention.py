"""Multi-head attention as the textbook describes it.

Each token is projected to a query, a key and a value per head; scores are QK^T / sqrt(d_head);
a softmax (in float32) over the visible keys weights the values; the heads are concatenated
and projected back to d_model. Grouped-query attention shares each key/value head between
num_heads // num_kv_heads query heads (num_kv_heads = 1 is multi-query attention).

Two paths compute the same function:
* `reference_attention`: plain einsums, returns the attention weights for inspection;
* `jax.nn.dot_product_attention`: XLA's fused path, cuDNN flash attention on GPUs.

Shape suffixes: B batch, L query length, S key length, D d_model, H query heads,
K kv heads, G = H // K query heads per kv head, Dh head_dim.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from models.layers import param


def causal_mask(segment_ids_BxL: jax.Array | None, length: int) -> jax.Array:
  """Boolean [B or 1, 1, L, L] mask: query l sees key s iff s <= l (and same segment)."""
  mask_LxL = jnp.tril(jnp.ones((length, length), dtype=bool))
  mask = mask_LxL[None, None]
  if segment_ids_BxL is not None:
    same_BxLxL = segment_ids_BxL[:, :, None] == segment_ids_BxL[:, None, :]
    mask = mask & same_BxLxL[:, None]
  return mask


def reference_attention(
  q_BxLxHxDh: jax.Array, k_BxSxKxDh: jax.Array, v_BxSxKxDh: jax.Array, mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
  """softmax(QK^T / sqrt(Dh)) V with einsums; returns (output BxLxHxDh, weights BxHxLxS)."""
  b, l, h, dh = q_BxLxHxDh.shape
  k = k_BxSxKxDh.shape[2]
  q_BxLxKxGxDh = q_BxLxHxDh.reshape(b, l, k, h // k, dh)
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
  weights_BxHxLxS = weights_BxKxGxLxS.reshape(b, h, l, -1)
  return out_BxLxKxGxDh.reshape(b, l, h, dh), weights_BxHxLxS


def rope(x_BxLxNxDh: jax.Array, positions_L: jax.Array, base: float = 10000.0) -> jax.Array:
  """Rotary position embedding (Su et al. 2021), rotating pairs (i, i + Dh/2)."""
  dh = x_BxLxNxDh.shape[-1]
  half = dh // 2
  freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles_LxHalf = positions_L[:, None].astype(jnp.float32) * freqs[None, :]
  sin = jnp.sin(angles_LxHalf)[None, :, None, :]
  cos = jnp.cos(angles_LxHalf)[None, :, None, :]
  x1, x2 = x_BxLxNxDh[..., :half].astype(jnp.float32), x_BxLxNxDh[..., half:].astype(jnp.float32)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x_BxLxNxDh.dtype)


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
    impl: str = 'xla',
    use_rope: bool = False,
    init_std: float = 0.02,
    out_init_std: float = 0.02,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
  ):
    if num_heads % num_kv_heads:
      raise ValueError(f'num_kv_heads={num_kv_heads} must divide num_heads={num_heads}')
    if use_rope and head_dim % 2:
      raise ValueError(f'rope needs an even head_dim, got {head_dim}')
    self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
    self.impl, self.use_rope, self.dtype = impl, use_rope, dtype
    h, k, dh, d = num_heads, num_kv_heads, head_dim, d_model
    normal, zeros = nnx.initializers.normal(init_std), nnx.initializers.zeros
    self.wq_DxHxDh = param(rngs, normal, (d, h, dh), ('embed', 'heads', 'head_dim'), param_dtype)
    self.wk_DxKxDh = param(rngs, normal, (d, k, dh), ('embed', 'kv_heads', 'head_dim'), param_dtype)
    self.wv_DxKxDh = param(rngs, normal, (d, k, dh), ('embed', 'kv_heads', 'head_dim'), param_dtype)
    self.bq_HxDh = param(rngs, zeros, (h, dh), ('heads', 'head_dim'), param_dtype)
    self.bk_KxDh = param(rngs, zeros, (k, dh), ('kv_heads', 'head_dim'), param_dtype)
    self.bv_KxDh = param(rngs, zeros, (k, dh), ('kv_heads', 'head_dim'), param_dtype)
    self.wo_HxDhxD = param(
        rngs, nnx.initializers.normal(out_init_std), (h, dh, d), ('heads', 'head_dim', 'embed'),
        param_dtype,
    )  # fmt: skip
    self.bo_D = param(rngs, zeros, (d,), ('embed',), param_dtype)

  def __call__(
    self,
    x_BxLxD: jax.Array,
    segment_ids_BxL: jax.Array | None = None,
    return_weights: bool = False,
  ) -> jax.Array | tuple[jax.Array, jax.Array]:
    dt = self.dtype
    b, length, d = x_BxLxD.shape
    h, k, dh = self.num_heads, self.num_kv_heads, self.head_dim
    # Projections as 2-D matmuls over all B*L tokens: XLA's CPU backward runs [B, L, D]-shaped
    # weight gradients at about half the matmul rate, and this is the same math.
    x_NxD = x_BxLxD.astype(dt).reshape(b * length, d)

    def project(w_DxMxDh, bias_MxDh, m):
      y_NxM = x_NxD @ w_DxMxDh[...].astype(dt).reshape(d, m * dh)
      return (y_NxM + bias_MxDh[...].astype(dt).reshape(m * dh)).reshape(b, length, m, dh)

    q_BxLxHxDh = project(self.wq_DxHxDh, self.bq_HxDh, h)
    k_BxLxKxDh = project(self.wk_DxKxDh, self.bk_KxDh, k)
    v_BxLxKxDh = project(self.wv_DxKxDh, self.bv_KxDh, k)
    if self.use_rope:
      positions = jnp.arange(length)
      q_BxLxHxDh, k_BxLxKxDh = rope(q_BxLxHxDh, positions), rope(k_BxLxKxDh, positions)

    weights = None
    if self.impl == 'reference' or return_weights:
      mask = causal_mask(segment_ids_BxL, length)
      out_BxLxHxDh, weights = reference_attention(q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, mask)
    elif segment_ids_BxL is None:
      out_BxLxHxDh = jax.nn.dot_product_attention(
          q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, is_causal=True,
          implementation='cudnn' if self.impl == 'cudnn' else None,
      )  # fmt: skip
    else:
      out_BxLxHxDh = jax.nn.dot_product_attention(
          q_BxLxHxDh, k_BxLxKxDh, v_BxLxKxDh, mask=causal_mask(segment_ids_BxL, length),
          implementation='cudnn' if self.impl == 'cudnn' else None,
      )  # fmt: skip

    wo_HDhxD = self.wo_HxDhxD[...].astype(dt).reshape(h * dh, d)
    out_NxD = out_BxLxHxDh.reshape(b * length, h * dh) @ wo_HDhxD + self.bo_D[...].astype(dt)
    out_BxLxD = out_NxD.reshape(b, length, d)
    return (out_BxLxD, weights) if return_weights else out_BxLxD
