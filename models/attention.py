"""Multi-head attention as the textbook describes it (shape letters: models/shapes.py).

Each token is projected to a query, a key and a value per head; scores are QK^T / sqrt(Dh);
a softmax (in float32) over the visible keys weights the values; the heads are concatenated
and projected back to D. Grouped-query attention shares each key/value head between
G = H // K query heads (K = 1 is multi-query attention).

The softmax(QK^T)V step has several implementations of the same function, all called from
`attend` (the one call site of `jax.nn.dot_product_attention`):
* 'reference': plain einsums (`reference_attention`), returns the weights for inspection;
* 'xla': XLA's dot_product_attention; it materializes B x H x L x S scores;
* 'cudnn': cuDNN flash attention (GPU; bf16/fp16), nothing L x S in memory;
* 'splash': the Pallas splash-attention kernel JAX ships for TPUs (interpreted elsewhere);
* 'auto' (the default) picks with `choose_attention`, a pure function of the platform and
  the shapes, and says once, in one log line, why it did not take the fused kernel.

Decoding with a key/value cache (`MultiHeadAttention.decode`, `cached_attention`) runs on
'reference' or 'xla' only (DECODE_IMPLS; any other setting decodes with 'xla'): its queries
are the L new tokens and its keys the whole fixed-size cache, an L x S rectangle whose mask is
"key position <= query position", not the square causal L x L the fused kernels are built for
(the splash kernel's mask is a fixed CausalMask((L, L)); cuDNN's causal mode aligns the
top-left corners). At one query row per step the L x S scores are small anyway.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from models import shapes
from models.layers import RESIDUAL, add_bias, constrain, current_sharding, dense, norm, param
from models.shapes import IMPLS

DECODE_IMPLS = ('reference', 'xla')
# From this length on, an accelerator never materializes L x S scores without saying so.
LONG = 1024
_FUSED_DTYPES = ('bfloat16', 'float16')
# The JAX primitives whose outputs are the fused kernels' forward results (output and softmax
# statistics): cuDNN's, and the Pallas call of splash. remat='dots' keeps them (transformer.py).
FUSED_PRIMITIVES = ('dot_product_attention_fwd_wrapper', 'pallas_call')


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


# ---------------------------------------------------------------------------------------------
# Which implementation runs: a pure function, so that the table is testable on any machine.


def cudnn_problem(dtype: str, head_dim: int, length: int, segments: bool, capability) -> str:
  """Why cuDNN flash attention cannot take this call ('' if it can).

  The conditions are those `jax.nn.dot_product_attention(implementation='cudnn')` checks
  (jax/_src/cudnn/fused_attention_stablehlo.py): a CUDA GPU of compute capability >= 8.0,
  bf16/fp16, head_dim a multiple of 8 up to 128 (256 from Hopper, 9.0, on); segment ids
  become a B x 1 x L x S mask, which cuDNN takes as a bias only for even lengths.
  """
  if capability is None:
    return 'not a CUDA GPU'
  if capability < 8.0:
    return f'cuDNN flash attention needs compute capability >= 8.0, this GPU has {capability}'
  if dtype not in _FUSED_DTYPES:
    return f'cuDNN flash attention takes bfloat16/float16, not {dtype} (set model.dtype)'
  max_dh = 256 if capability >= 9.0 else 128
  if head_dim % 8 or head_dim > max_dh:
    return f'head_dim {head_dim} is not a multiple of 8 up to {max_dh} (cuDNN flash attention)'
  if segments and length % 2:
    return f'cuDNN takes segment ids (as a mask) only at even lengths, not {length}'
  return ''


def splash_problem(length: int) -> str:
  """Why the Pallas splash-attention kernel cannot take this call ('' if it can)."""
  if length % 128:
    return f'splash attention needs a length that is a multiple of 128, not {length}'
  return ''


def choose_attention(
  requested: str,
  *,
  platform: str,
  dtype: str,
  head_dim: int,
  length: int,
  segments: bool = False,
  capability: float | None = None,
) -> tuple[str, str]:
  """(implementation, reason): what runs, and a one-line reason to log ('' = nothing to say).

  platform is 'cpu', 'gpu' or 'tpu'; capability is the CUDA compute capability (e.g. 9.0),
  None on other devices. An explicit 'cudnn' or 'splash' that cannot run is a ValueError.
  """
  accelerator = platform in ('gpu', 'tpu')
  materializes = f'materializes B x H x L x L scores at L={length}'
  if requested in ('reference', 'xla'):
    long = accelerator and length >= LONG
    return requested, f'attention_impl={requested!r} {materializes} on {platform}' if long else ''
  if requested == 'cudnn':
    problem = (
      'not a GPU'
      if platform != 'gpu'
      else cudnn_problem(dtype, head_dim, length, segments, capability)
    )
    if problem:
      raise ValueError(f'attention_impl=cudnn: {problem}')
    return 'cudnn', ''
  if requested == 'splash':
    problem = splash_problem(length)
    if problem:
      raise ValueError(f'attention_impl=splash: {problem}')
    return 'splash', ''
  shapes.choose('attention_impl', requested, IMPLS)
  if platform == 'gpu':
    problem = cudnn_problem(dtype, head_dim, length, segments, capability)
    if not problem:
      return 'cudnn', ''
  elif platform == 'tpu':
    problem = splash_problem(length)
    if not problem:
      return 'splash', ''
  else:
    return 'xla', ''
  return 'xla', f'attention falls back to XLA, which {materializes}: {problem}'


_logged: set[str] = set()


def log_once(reason: str) -> None:
  """One warning line per distinct reason per process (not per call or per trace)."""
  if reason and reason not in _logged:
    _logged.add(reason)
    logging.warning('%s', reason)


# What a fused kernel's build failure says (cuDNN's "no execution plans", a Mosaic error).
_KERNEL_ERROR = re.compile(r'cudnn|fmha|mosaic|splash|tpu_custom_call', re.IGNORECASE)


def kernel_failure(error: BaseException) -> str:
  """One line saying why, if `error` is a fused attention kernel failing to build ('' if not)."""
  text = str(error).strip()
  if not _KERNEL_ERROR.search(text):
    return ''
  first = text.splitlines()[0] if text else ''
  return (
    'attention falls back to XLA, which materializes B x H x L x L scores: the fused kernel '
    f'did not compile for this shape ({type(error).__name__}: {first[:200]})'
  )


def device_capability() -> float | None:
  """CUDA compute capability of the first device (e.g. 9.0), None elsewhere."""
  device = jax.devices()[0]
  try:
    return float(device.compute_capability) if device.platform == 'gpu' else None
  except (AttributeError, TypeError, ValueError):
    return None  # e.g. a ROCm GPU: no cuDNN


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
    return splash_attention(q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, segment_ids_BxL, interpret)
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


def splash_attention(
  q_BxLxHxDh: jax.Array,
  k_BxSxKxDh: jax.Array,
  v_BxSxKxDh: jax.Array,
  segment_ids_BxL: jax.Array | None,
  interpret: bool,
) -> jax.Array:
  """The Pallas splash-attention kernel (TPU; run by the Pallas interpreter on other devices).

  One multi-query kernel per kv head serves its G query heads. On a mesh (inside
  `activation_sharding`) it runs under shard_map over the batch and heads, since XLA cannot
  partition a Pallas kernel itself.
  """
  h, k = q_BxLxHxDh.shape[2], k_BxSxKxDh.shape[2]
  q_sh = current_sharding(('batch', None, 'act_heads', None), q_BxLxHxDh.shape)
  local = functools.partial(_splash_local, interpret=interpret)
  if q_sh is None or q_sh.mesh.size == 1:
    return local(q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, segment_ids_BxL)
  kv_sh = current_sharding(('batch', None, 'act_kv_heads', None), k_BxSxKxDh.shape)
  if k > 1 and q_sh.spec[2] is not None and kv_sh.spec[2] != q_sh.spec[2]:
    # Heads split but kv heads not (e.g. K = 2 on tensor = 4): give each query head its own
    # copy of its kv head, so that every device holds the kv heads its query heads read.
    # (K = 1 needs nothing: every device holds the one kv head.)
    k_BxSxKxDh = jnp.repeat(k_BxSxKxDh, h // k, axis=2)
    v_BxSxKxDh = jnp.repeat(v_BxSxKxDh, h // k, axis=2)
    kv_sh = q_sh
  args, specs = [q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh], [q_sh.spec, kv_sh.spec, kv_sh.spec]
  if segment_ids_BxL is not None:
    args.append(segment_ids_BxL)
    specs.append(jax.sharding.PartitionSpec(q_sh.spec[0], None))
  return jax.shard_map(
    local, mesh=q_sh.mesh, in_specs=tuple(specs), out_specs=q_sh.spec, check_vma=False
  )(*args)


def _splash_local(q_BxLxHxDh, k_BxSxKxDh, v_BxSxKxDh, segment_ids_BxL=None, *, interpret):
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk

  b, length, h, dh = q_BxLxHxDh.shape
  k = k_BxSxKxDh.shape[2]
  kernel = _splash_kernel(length, h // k, interpret)
  scale = 1.0 / np.sqrt(dh)  # the kernel does not scale the scores itself
  q_BxKxGxLxDh = (q_BxLxHxDh * scale).reshape(b, length, k, h // k, dh).transpose(0, 2, 3, 1, 4)
  k_BxKxSxDh = k_BxSxKxDh.transpose(0, 2, 1, 3)
  v_BxKxSxDh = v_BxSxKxDh.transpose(0, 2, 1, 3)

  def one(q_GxLxDh, k_SxDh, v_SxDh, seg_L):
    seg = None if seg_L is None else sk.SegmentIds(q=seg_L, kv=seg_L)
    return kernel(q_GxLxDh, k_SxDh, v_SxDh, segment_ids=seg)

  seg_axis = None if segment_ids_BxL is None else 0
  per_kv_head = jax.vmap(one, in_axes=(0, 0, 0, None))
  out_BxKxGxLxDh = jax.vmap(per_kv_head, in_axes=(0, 0, 0, seg_axis))(
    q_BxKxGxLxDh, k_BxKxSxDh, v_BxKxSxDh, segment_ids_BxL
  )
  out_BxLxHxDh = out_BxKxGxLxDh.transpose(0, 3, 1, 2, 4).reshape(b, length, h, dh)
  return out_BxLxHxDh.astype(q_BxLxHxDh.dtype)  # the kernel's output is float32


@functools.cache
def _splash_kernel(length: int, group: int, interpret: bool):
  """A causal multi-query splash kernel for `group` query heads (built once per shape)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

  block = next(blk for blk in (512, 256, 128) if length % blk == 0)
  sizes = sk.BlockSizes(
    block_q=block,
    block_kv=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_q_dq=block,
    block_kv_dq=block,
  )
  mask = sm.MultiHeadMask([sm.CausalMask((length, length))] * group)
  return sk.make_splash_mqa_single_device(mask, block_sizes=sizes, interpret=interpret)


# ---------------------------------------------------------------------------------------------
# The layer.


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
    shapes.choose('attention_impl', impl, IMPLS)
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
    impl, reason = choose_attention(
      self.impl,
      platform=self.platform or jax.default_backend(),
      dtype=jnp.dtype(self.dtype).name,
      head_dim=self.head_dim,
      length=length,
      segments=segments,
      capability=device_capability(),
    )
    log_once(reason)
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
