"""Small building blocks: parameters born with logical axis names, LayerNorm, MLP.

Every parameter carries `logical_axes` metadata (e.g. ('embed', 'mlp')). `train/sharding.py`
maps those names to mesh axes with the config's rules; this is the one place sharding is
declared.
"""

import jax
import jax.numpy as jnp
from flax import nnx


def param(rngs: nnx.Rngs, init, shape: tuple[int, ...], axes: tuple, dtype) -> nnx.Param:
  """A parameter initialized by `init`, annotated with one logical axis name per dimension."""
  assert len(shape) == len(axes), (shape, axes)
  return nnx.Param(init(rngs.params(), shape, dtype), logical_axes=tuple(axes))


class LayerNorm(nnx.Module):
  """LayerNorm with scale and bias, computed in float32 whatever the compute dtype."""

  def __init__(self, dim: int, *, rngs: nnx.Rngs, eps: float = 1e-5, param_dtype=jnp.float32):
    self.scale_D = param(rngs, nnx.initializers.ones, (dim,), ('embed',), param_dtype)
    self.bias_D = param(rngs, nnx.initializers.zeros, (dim,), ('embed',), param_dtype)
    self.eps = eps

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    x = x_BxLxD.astype(jnp.float32)
    mean = x.mean(-1, keepdims=True)
    var = jnp.square(x - mean).mean(-1, keepdims=True)
    y = (x - mean) * jax.lax.rsqrt(var + self.eps)
    y = y * self.scale_D[...].astype(jnp.float32) + self.bias_D[...].astype(jnp.float32)
    return y.astype(x_BxLxD.dtype)


class Mlp(nnx.Module):
  """Two projections with a GELU between them: D -> F -> D."""

  def __init__(
      self, d_model: int, d_ff: int, *, rngs: nnx.Rngs, init_std: float, out_init_std: float,
      dtype=jnp.float32, param_dtype=jnp.float32,
  ):  # fmt: skip
    zeros = nnx.initializers.zeros
    self.w1_DxF = param(
      rngs, nnx.initializers.normal(init_std), (d_model, d_ff), ('embed', 'mlp'), param_dtype
    )
    self.b1_F = param(rngs, zeros, (d_ff,), ('mlp',), param_dtype)
    self.w2_FxD = param(
      rngs, nnx.initializers.normal(out_init_std), (d_ff, d_model), ('mlp', 'embed'), param_dtype
    )
    self.b2_D = param(rngs, zeros, (d_model,), ('embed',), param_dtype)
    self.dtype = dtype

  def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
    dt = self.dtype
    b, length, d = x_BxLxD.shape
    # 2-D matmuls over all B*L tokens (see attention.py: faster backward on XLA:CPU).
    x_NxD = x_BxLxD.astype(dt).reshape(b * length, d)
    h_NxF = jax.nn.gelu(x_NxD @ self.w1_DxF[...].astype(dt) + self.b1_F[...].astype(dt))
    y_NxD = h_NxF @ self.w2_FxD[...].astype(dt) + self.b2_D[...].astype(dt)
    return y_NxD.reshape(b, length, d)
