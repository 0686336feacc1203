"""Which attention implementation runs, and the fused kernels that are not JAX's own function.

The softmax(QK^T)V step of models/attention.py has several implementations of the same
function (model.attention_impl, names in models/shapes.py):
* 'reference': plain einsums (`attention.reference_attention`), returns the weights;
* 'xla': XLA's dot_product_attention; it materializes B x H x L x S scores;
* 'cudnn': cuDNN flash attention (GPU; bf16/fp16), nothing L x S in memory;
* 'splash': the Pallas splash-attention kernel JAX ships for TPUs (interpreted elsewhere);
* 'auto' (the default) picks with `choose_attention`, a pure function of the platform and
  the shapes, and says once, in one log line, why it did not take the fused kernel.
A fused kernel that fails to compile under 'auto' falls back to XLA (`kernel_failure`,
train/step.py).
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from models.layers import current_sharding
from models.shapes import IMPLS, choose

# From this length on, an accelerator never materializes L x S scores without saying so.
LONG = 1024
_FUSED_DTYPES = ('bfloat16', 'float16')
# The JAX primitives whose outputs are the fused kernels' forward results (output and softmax
# statistics): cuDNN's, and the Pallas call of splash. remat='dots' keeps them (transformer.py).
FUSED_PRIMITIVES = ('dot_product_attention_fwd_wrapper', 'pallas_call')


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
  choose('attention_impl', requested, IMPLS)
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
