"""The program a GPU or TPU would run, lowered on this CPU and read.

`jit(train_step).trace(...).lower(lowering_platforms=('cuda',))` works on a CPU-only jaxlib and
gives the StableHLO that XLA:GPU would compile: every kernel, cast and recomputation is visible.
The step is GPT-3 Medium as experiments/configs/gpt3.py trains it (bf16 compute, scanned layers,
remat='dots': the accelerator defaults) at B 8, T 2048, vocabulary 50304. What is asserted is
what decides GPU speed: the fused attention kernel runs once forward and once backward per
layer, nothing L x L is built, the vocabulary matmuls stay bf16, and the per-layer casts stay
within a stated budget. Two things are set by hand because no GPU is here: jax's cuDNN version
check (it asks the driver) and the device's compute capability (an H100's, 9.0).
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention

from experiments.configs import gpt3 as gpt3_config
from models import kernels
from models.transformer import ModelConfig
from tests.test_hlo_collectives import abstract_step_args
from train import sharding
from train.step import make_trainer

B, T, VOCAB = 8, 2048, 50304
LOWERING = {'gpu': 'cuda', 'tpu': 'tpu'}
CUDNN_FWD, CUDNN_BWD = '@__cudnn$fmhaSoftmax(', '@__cudnn$fmhaSoftmaxBackward('
SPLASH_KERNELS = {
  'splash_mqa_fwd_residuals',
  'splash_mqa_dq_no_residuals',
  'splash_mqa_dkv_no_residuals',
}
# Casts in one layer's forward and backward bodies, counted from the lowered program: each
# LayerNorm's input up to float32 and its output down to bf16, in the forward pass (2 norms x 2)
# and again in the backward (recomputed under remat, and their gradients). The weights are cast
# to bf16 once outside the scan (Transformer._cast_outside_norms); cast inside, each layer would
# add 35 casts (weights, biases, the weights' gradients back to float32, twice under remat).
LAYER_CONVERTS = 12


@functools.cache
def lowered(platform: str, **overrides) -> str:
  """StableHLO text of the GPT-3 Medium train step, lowered for `platform` on this CPU."""
  c = gpt3_config.get_config('Medium')
  assert (c.model.dtype, c.model.scan_layers, c.model.remat) == ('bfloat16', True, 'dots')
  c.model.vocab_size = VOCAB
  c.model.update(overrides)
  c.train.global_batch = B
  c.mesh.update(dict(data=1, fsdp=1, tensor=1))
  model_cfg = ModelConfig.from_config(c.model, platform=platform)
  trainer = make_trainer(c, model_cfg, sharding.make_mesh(c.mesh, jax.devices()[:1]))
  state, batch = abstract_step_args(trainer, B, T)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(cudnn_attention, 'check_cudnn_version', lambda: 91000)
    mp.setattr(kernels, 'device_capability', lambda: 9.0)
    traced = trainer.train_step.trace(state, batch)
    return traced.lower(lowering_platforms=(LOWERING[platform],)).as_text()


def functions(text: str) -> list[str]:
  """The module's functions (the scan's layer bodies are their own private functions)."""
  return re.split(r'\n  func\.func ', text)


def layer_bodies(text: str, fwd: str, bwd: str) -> tuple[str, str]:
  """The forward and the backward body of the scanned layer, found by their attention kernels."""
  (forward,) = [f for f in functions(text) if fwd in f and bwd not in f]
  (backward,) = [f for f in functions(text) if bwd in f]
  return forward, backward


def test_cuda_one_attention_forward_and_one_backward_per_layer():
  forward, backward = layer_bodies(lowered('gpu'), CUDNN_FWD, CUDNN_BWD)
  assert forward.count(CUDNN_FWD) == 1 and backward.count(CUDNN_BWD) == 1
  # Not recomputed in the backward pass: remat='dots' keeps the kernel's output and statistics.
  assert backward.count(CUDNN_FWD) == 0


def test_the_recomputation_check_sees_a_recomputed_kernel():
  """remat='full' recomputes the forward by design: the same reading finds it there."""
  _, backward = layer_bodies(lowered('gpu', remat='full'), CUDNN_FWD, CUDNN_BWD)
  assert backward.count(CUDNN_FWD) == 1


def test_tpu_splash_kernels_once_each():
  names = re.findall(r'kernel_name = "([^"]*)"', lowered('tpu'))
  assert sorted(names) == sorted(SPLASH_KERNELS), names  # forward kept, not recomputed


L_BY_L = re.compile(rf'tensor<(?:\d+x)*{T}x{T}x')


@pytest.mark.parametrize('platform', ['gpu', 'tpu'])
def test_nothing_length_by_length(platform):
  assert not L_BY_L.search(lowered(platform))


def test_the_length_by_length_check_sees_xla_attention():
  assert L_BY_L.search(lowered('gpu', attention_impl='xla'))


def _vocab_dots(text: str) -> list[tuple[list[str], str]]:
  """(operand element types, result element type) of every matmul with a vocabulary axis."""
  out = []
  for m in re.finditer(
    r'stablehlo\.dot_general .*?: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)', text
  ):
    if any(f'{VOCAB}' in t for t in m.groups()):
      out.append(
        ([t.rsplit('x', 1)[1][:-1] for t in m.groups()[:2]], m.group(3).rsplit('x', 1)[1][:-1])
      )
  return out


@pytest.mark.parametrize('platform', ['gpu', 'tpu'])
def test_vocabulary_matmuls_are_bf16_accumulated_in_f32(platform):
  dots = _vocab_dots(lowered(platform))
  assert len(dots) == 3, dots  # the logits, and their two gradients
  for operands, result in dots:
    assert operands == ['bf16', 'bf16'] and result == 'f32', dots


@pytest.mark.parametrize('platform', ['gpu', 'tpu'])
def test_casts_per_layer_within_budget(platform):
  fwd, bwd = (CUDNN_FWD, CUDNN_BWD) if platform == 'gpu' else ('splash_mqa_fwd', 'splash_mqa_dq')
  forward, backward = layer_bodies(lowered(platform), fwd, bwd)
  converts = forward.count('stablehlo.convert') + backward.count('stablehlo.convert')
  assert converts <= LAYER_CONVERTS, converts


def test_casting_outside_the_scan_changes_no_value(monkeypatch):
  """Cast-then-slice is slice-then-cast: loss and gradients are bitwise those of in-body casts."""
  from flax import nnx

  from models import transformer
  from tests.test_models import model_cfg

  cfg = model_cfg(scan_layers=True, num_layers=3, dtype='bfloat16', remat='dots')
  model = transformer.Transformer(cfg, rngs=nnx.Rngs(0))
  graph, params = nnx.split(model)
  tokens = jax.random.randint(jax.random.key(1), (2, 16), 0, cfg.vocab_size)

  def loss(p):
    logits = nnx.merge(graph, p)(tokens)
    return jax.nn.log_softmax(logits)[:, :-1].max(-1).mean()

  hoisted = jax.value_and_grad(loss)(params)
  monkeypatch.setattr(transformer, '_cast_outside_norms', lambda blocks, state, dtype: state)
  in_body = jax.value_and_grad(loss)(params)
  for a, b in zip(jax.tree.leaves(hoisted), jax.tree.leaves(in_body), strict=True):
    assert (a == b).all()


def test_bf16_logits_keep_the_loss_and_round_only_the_cotangent():
  """The custom_vjp logits: the loss is autodiff's bit for bit; the gradients differ only by
  the logits' cotangent rounded to bf16 (within 1% of the largest entry)."""
  from models import transformer
  from models.layers import dense
  from train.step import cross_entropy

  kx, kw, kt = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (4, 32, 64)).astype(jnp.bfloat16)
  w = (jax.random.normal(kw, (64, 512)) * 0.3).astype(jnp.bfloat16)
  targets = jax.random.randint(kt, (4, 32), 0, 512)

  def loss(logits_fn):
    return lambda x, w: cross_entropy(logits_fn(x, w), targets)[0].mean()

  ours = jax.value_and_grad(loss(transformer.unembed), argnums=(0, 1))(x, w)
  plain = lambda x, w: dense(x, w, out_dtype=jnp.float32)  # noqa: E731
  autodiff = jax.value_and_grad(loss(plain), argnums=(0, 1))(x, w)
  assert ours[0] == autodiff[0]
  for got, want in zip(ours[1], autodiff[1], strict=True):
    assert got.dtype == want.dtype == jnp.bfloat16
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    assert np.abs(got - want).max() <= 0.01 * np.abs(want).max()
    assert np.abs(got - want).max() > 0  # the cotangent was rounded: not autodiff's path
