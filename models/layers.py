"""Small building blocks: parameters born with logical axis names, the one matmul helper,
activation sharding constraints, LayerNorm, MLP.

Array names carry their shapes as suffixes (`x_BxLxD`); the letters are models/shapes.py's.

Every parameter carries `logical_axes` metadata (e.g. ('embed', 'mlp')). `train/sharding.py`
maps those names to mesh axes with the config's rules; this is the one place parameter
sharding is declared. Activations are pinned the same way by `constrain`, with their own
logical names (see ACTIVATION_AXES) looked up in the same rules.
"""

import contextlib
import contextvars
import math
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from models.shapes import MLPS, NORMS, choose


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple, dtype) -> nnx.Param:
  """A parameter initialized by `init`, annotated with one logical axis name per dimension."""
  assert len(shape) == len(axes), (shape, axes)
  return nnx.Param(init(rngs.params(), shape, dtype), logical_axes=tuple(axes))


def dense(x: jax.Array, w: jax.Array, n_in: int = 1, out_dtype=None) -> jax.Array:
  """Contracts the last `n_in` axes of x with the first `n_in` axes of w.

  E.g. dense(x_BxLxD, w_DxHxDh) -> BxLxHxDh and dense(o_BxLxHxDh, w_HxDhxD, 2) -> BxLxD. It is
  computed as ONE 2-D matmul [BL, in] @ [in, out]: XLA:CPU runs the weight gradient of a
  [B, L, D]-shaped dot at about half the matmul rate, and the flattened form is the same math.
  """
  lead, out = x.shape[: x.ndim - n_in], w.shape[n_in:]
  size_in = math.prod(w.shape[:n_in])
  y_BLxO = jnp.dot(x.reshape(-1, size_in), w.reshape(size_in, -1), preferred_element_type=out_dtype)
  return y_BLxO.reshape(*lead, *out)


# Logical names of activation axes, looked up in the same `sharding_rules` as the parameters'.
# They are distinct from the parameter names because one mesh axis plays different roles: with
# FSDP, the parameter axis 'embed' is split over 'fsdp' while activations are split over
# ('data', 'fsdp') along the batch, so the residual stream's 'act_embed' must stay unsplit.
#   'batch'        batch rows (the same rule that shards the input batch)
#   'act_length'   positions of the residual stream between blocks; mapping it to 'tensor'
#                  gives Megatron-style sequence parallelism (attention and the MLP gather it)
#   'act_embed'    d_model of the residual stream
#   'act_heads', 'act_kv_heads'   heads inside attention (Megatron tensor parallelism)
#   'act_mlp'      the MLP's hidden width
#   'act_vocab'    the logits' vocabulary axis
RESIDUAL = ('batch', 'act_length', 'act_embed')  # B x L x D between and around sublayers
# The embedding lookup's rows, split like the table's columns ('embed' is the parameter name:
# it claims its mesh axis before 'batch' does, train/sharding.spec_for).
LOOKUP = ('batch', 'act_length', 'embed')
ACTIVATION_AXES = (
  'batch',
  'act_length',
  'act_embed',
  'act_heads',
  'act_kv_heads',
  'act_mlp',
  'act_vocab',
)

_TO_SHARDING: contextvars.ContextVar[Callable | None] = contextvars.ContextVar(
  'activation_sharding', default=None
)


@contextlib.contextmanager
def activation_sharding(to_sharding: Callable) -> Iterator[None]:
  """While tracing inside it, `constrain` pins activations to `to_sharding(axes, shape)`.

  train/sharding.py opens it with the config's rules and the mesh; outside it (one device,
  tests, inspection) `constrain` does nothing.
  """
  token = _TO_SHARDING.set(to_sharding)
  try:
    yield
  finally:
    _TO_SHARDING.reset(token)


def current_sharding(logical_axes: tuple, shape: tuple[int, ...]):
  """The sharding that `constrain` would give an array, or None outside `activation_sharding`."""
  to_sharding = _TO_SHARDING.get()
  return None if to_sharding is None else to_sharding(logical_axes, shape)


def constrain(x: jax.Array, logical_axes: tuple) -> jax.Array:
  """`with_sharding_constraint` by logical activation axis names (None: not split)."""
  sharding = current_sharding(logical_axes, x.shape)
  return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


class LayerNorm(nnx.Module):
  """LayerNorm (Ba et al. 2016): (x - mean) / sqrt(var + eps) * scale (+ bias), in float32.

  `axis` is the logical name of the normalized axis ('embed' on the residual stream,
  'head_dim' for qk-norm); `use_bias=False` drops the additive bias.
  """

  def __init__(
    self,
    dim: int,
    *,
    rngs: nnx.Rngs,
    eps: float = 1e-5,
    param_dtype=jnp.float32,
    use_bias: bool = True,
    axis: str = 'embed',
  ):
    self.scale_D = param(rngs, nnx.initializers.ones, (dim,), (axis,), param_dtype)
    self.bias_D = (
      param(rngs, nnx.initializers.zeros, (dim,), (axis,), param_dtype) if use_bias else None
    )
    self.eps = eps

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    x = x_BxLxD.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.scale_D[...].astype(jnp.float32)
    if self.bias_D is not None:
      y = y + self.bias_D[...].astype(jnp.float32)
    return y.astype(x_BxLxD.dtype)


class RMSNorm(nnx.Module):
  """RMSNorm (Zhang & Sennrich 2019): x / sqrt(mean(x^2) + eps) * scale, in float32; no
  centering, no bias."""

  def __init__(
    self, dim: int, *, rngs: nnx.Rngs, eps: float = 1e-5, param_dtype=jnp.float32, axis='embed'
  ):
    self.scale_D = param(rngs, nnx.initializers.ones, (dim,), (axis,), param_dtype)
    self.eps = eps

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    x = x_BxLxD.astype(jnp.float32)
    y = x * jax.lax.rsqrt(jnp.square(x).mean(-1, keepdims=True) + self.eps)
    return (y * self.scale_D[...].astype(jnp.float32)).astype(x_BxLxD.dtype)


def norm(kind: str, dim: int, *, rngs: nnx.Rngs, param_dtype, use_bias: bool, axis='embed'):
  """The normalization `kind` names (model.norm): 'layernorm' or 'rmsnorm' (never a bias)."""
  choose('norm', kind, NORMS)
  if kind == 'rmsnorm':
    return RMSNorm(dim, rngs=rngs, param_dtype=param_dtype, axis=axis)
  return LayerNorm(dim, rngs=rngs, param_dtype=param_dtype, use_bias=use_bias, axis=axis)


def add_bias(y: jax.Array, bias: nnx.Param | None, dtype) -> jax.Array:
  """y + bias, or y when the layer was built without biases (model.use_bias=False)."""
  return y if bias is None else y + bias[...].astype(dtype)


class Mlp(nnx.Module):
  """D -> F -> D. 'gelu' (GPT-2/3): gelu(x W1 + b1) W2 + b2. 'swiglu' (Shazeer 2020, as in
  PaLM and Llama): (silu(x W1) * (x W3)) W2, three matrices; W1 is the gate, W3 the up
  projection. `use_bias=False` drops b1 (b3) and b2."""

  def __init__(
    self,
    d_model: int,
    d_ff: int,
    *,
    rngs: nnx.Rngs,
    init_std: float,
    out_init_std: float,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    kind: str = 'gelu',
    use_bias: bool = True,
  ):
    choose('mlp', kind, MLPS)
    zeros, normal = nnx.initializers.zeros, nnx.initializers.normal(init_std)
    bias = lambda shape, axes: param(rngs, zeros, shape, axes, param_dtype) if use_bias else None  # noqa: E731
    self.kind = kind
    self.w1_DxF = param(rngs, normal, (d_model, d_ff), ('embed', 'mlp'), param_dtype)
    self.b1_F = bias((d_ff,), ('mlp',))
    if kind == 'swiglu':
      self.w3_DxF = param(rngs, normal, (d_model, d_ff), ('embed', 'mlp'), param_dtype)
      self.b3_F = bias((d_ff,), ('mlp',))
    self.w2_FxD = param(
      rngs, nnx.initializers.normal(out_init_std), (d_ff, d_model), ('mlp', 'embed'), param_dtype
    )
    self.b2_D = bias((d_model,), ('embed',))
    self.dtype = dtype

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    dt = self.dtype
    x_BxLxD = x_BxLxD.astype(dt)
    h_BxLxF = add_bias(dense(x_BxLxD, self.w1_DxF[...].astype(dt)), self.b1_F, dt)
    if self.kind == 'swiglu':
      up_BxLxF = add_bias(dense(x_BxLxD, self.w3_DxF[...].astype(dt)), self.b3_F, dt)
      h_BxLxF = jax.nn.silu(h_BxLxF) * up_BxLxF
    else:
      h_BxLxF = jax.nn.gelu(h_BxLxF)
    # Tensor parallelism splits F; the full length is gathered here (see 'act_length').
    h_BxLxF = constrain(h_BxLxF, ('batch', None, 'act_mlp'))
    y_BxLxD = add_bias(dense(h_BxLxF, self.w2_FxD[...].astype(dt)), self.b2_D, dt)
    # Back on the residual stream's sharding: the all-reduce (or reduce-scatter) of B x L x D.
    return constrain(y_BxLxD, RESIDUAL)
