"""PyTorch reference of the JAX model's training step, for the speed comparison in train_step.

  python -m benchmarks.torch_reference --d_model=512 --num_layers=8 --num_heads=8 \
      --seq_len=256 --batch=8 --steps=5 --compile

The same GPT-2/3 decoder as models/transformer.py with learned positions and tied embeddings:
token + position embeddings, N pre-LayerNorm blocks (x + attn(ln1(x)); x + mlp(ln2(x))), causal
attention through `F.scaled_dot_product_attention`, an exact-GELU MLP, a final LayerNorm and
logits = x @ embedding.T. Init normal(0.02), residual output projections normal(0.02/sqrt(2N)),
biases 0. The step mirrors train/step.py: float32, cross-entropy, global-norm clipping at 1.0,
AdamW (lr 1e-3, betas (0.9, 0.95), weight decay 0.1 on matrices except the position table).

On a GPU (device='cuda') it is the strongest standard PyTorch recipe, nanoGPT's, with this
model's biases kept: float32 parameters under bfloat16 autocast (dtype='bfloat16'),
`F.scaled_dot_product_attention(is_causal=True)` (flash attention), fused AdamW,
torch.compile, TF32 matmuls for what stays float32, clipping at 1.0; the loss stays on the
device inside the timed loop (one synchronization at the end), and the peak memory is
torch.cuda.max_memory_allocated.

  python -m benchmarks.torch_reference --device=cuda --dtype=bfloat16 --compile \
      --d_model=1024 --num_layers=24 --num_heads=16 --vocab_size=50304 --seq_len=2048 --batch=8

PyTorch is an optional benchmark dependency: this module imports it only inside functions, so it
imports without torch and changes no global state until `benchmark` runs.
"""

import functools
import json
import math
import sys
import time
from typing import Any

from absl import app, flags

from models import shapes

_SHAPE_KEYS = (
  'd_model',
  'num_layers',
  'num_heads',
  'head_dim',
  'd_ff',
  'vocab_size',
  'max_seq_len',
  'gelu_approximate',
)


def available() -> bool:
  """True when torch can be imported."""
  try:
    import torch  # noqa: F401
  except ImportError:
    return False
  return True


def cuda_available() -> bool:
  """True when torch is installed and sees a CUDA GPU."""
  if not available():
    return False
  import torch

  return torch.cuda.is_available()


def _require_torch():
  try:
    import torch
  except ImportError:
    raise ImportError(
      'the PyTorch reference needs torch: .venv/bin/python -m pip install torch==2.13.0'
    ) from None
  return torch


@functools.cache
def _model_class():
  """The nn.Module classes, defined on first use so that importing this module needs no torch."""
  torch = _require_torch()
  from torch import nn
  from torch.nn import functional as F

  class Attention(nn.Module):
    def __init__(self, d_model: int, num_heads: int, head_dim: int):
      super().__init__()
      self.num_heads, self.head_dim = num_heads, head_dim
      # Q, K and V in one matmul: the same parameters (3 x [D, H*Dh] + 3 x [H*Dh]) as three
      # separate projections, and what a PyTorch user would write for speed.
      self.qkv = nn.Linear(d_model, 3 * num_heads * head_dim)
      self.out = nn.Linear(num_heads * head_dim, d_model)

    def forward(self, x_BxLxD: torch.Tensor) -> torch.Tensor:
      b, length, _ = x_BxLxD.shape
      qkv_BxLx3HDh = self.qkv(x_BxLxD)
      # [B, L, 3, H, Dh] -> 3 x [B, H, L, Dh], the layout scaled_dot_product_attention takes.
      q_BxHxLxDh, k_BxHxLxDh, v_BxHxLxDh = qkv_BxLx3HDh.view(
        b, length, 3, self.num_heads, self.head_dim
      ).permute(2, 0, 3, 1, 4)
      o_BxHxLxDh = F.scaled_dot_product_attention(
        q_BxHxLxDh, k_BxHxLxDh, v_BxHxLxDh, is_causal=True
      )
      o_BxLxHDh = o_BxHxLxDh.transpose(1, 2).reshape(b, length, self.num_heads * self.head_dim)
      return self.out(o_BxLxHDh)

  class Block(nn.Module):
    def __init__(self, d_model: int, num_heads: int, head_dim: int, d_ff: int, gelu: str):
      super().__init__()
      self.gelu = gelu
      self.ln1 = nn.LayerNorm(d_model, eps=1e-5)
      self.attn = Attention(d_model, num_heads, head_dim)
      self.ln2 = nn.LayerNorm(d_model, eps=1e-5)
      self.fc = nn.Linear(d_model, d_ff)
      self.proj = nn.Linear(d_ff, d_model)

    def forward(self, x_BxLxD: torch.Tensor) -> torch.Tensor:
      x_BxLxD = x_BxLxD + self.attn(self.ln1(x_BxLxD))
      h_BxLxF = F.gelu(self.fc(self.ln2(x_BxLxD)), approximate=self.gelu)
      return x_BxLxD + self.proj(h_BxLxF)

  class GPT(nn.Module):
    """Decoder-only transformer: tokens [B, L] -> float32 logits [B, L, V]."""

    def __init__(
      self, d_model, num_layers, num_heads, head_dim, d_ff, vocab_size, max_seq_len, gelu
    ):
      super().__init__()
      self.max_seq_len = max_seq_len
      self.embed = nn.Embedding(vocab_size, d_model)
      self.pos = nn.Embedding(max_seq_len, d_model)
      self.blocks = nn.ModuleList(
        [Block(d_model, num_heads, head_dim, d_ff, gelu) for _ in range(num_layers)]
      )
      self.ln_f = nn.LayerNorm(d_model, eps=1e-5)

    def forward(self, tokens_BxL: torch.Tensor) -> torch.Tensor:
      length = tokens_BxL.shape[1]
      if length > self.max_seq_len:
        raise ValueError(f'sequence length {length} > max_seq_len={self.max_seq_len}')
      positions_L = torch.arange(length, device=tokens_BxL.device)
      x_BxLxD = self.embed(tokens_BxL) + self.pos(positions_L)
      for block in self.blocks:
        x_BxLxD = block(x_BxLxD)
      # Tied unembedding: the logits reuse the token embedding matrix.
      return F.linear(self.ln_f(x_BxLxD), self.embed.weight)

  return GPT


def build(
  d_model: int,
  num_layers: int,
  num_heads: int,
  head_dim: int,
  d_ff: int,
  vocab_size: int,
  max_seq_len: int,
  seed: int = 0,
  gelu_approximate: str = 'none',
) -> Any:
  """The float32 model (a torch.nn.Module) on CPU, initialized from `seed` (global RNG kept).

  `gelu_approximate`: 'none' (exact erf GELU, the default) or 'tanh' (what jax.nn.gelu computes
  by default; used to check the model against the JAX one exactly).
  """
  if gelu_approximate not in ('none', 'tanh'):
    raise ValueError(f"gelu_approximate={gelu_approximate!r}; use 'none' or 'tanh'")
  sizes = dict(
    d_model=d_model,
    num_layers=num_layers,
    num_heads=num_heads,
    head_dim=head_dim,
    d_ff=d_ff,
    vocab_size=vocab_size,
    max_seq_len=max_seq_len,
  )
  for key, value in sizes.items():
    if not isinstance(value, int) or value < 1:
      raise ValueError(f'{key} must be a positive integer, got {value!r}')
  torch = _require_torch()
  from torch import nn

  model = _model_class()(**sizes, gelu=gelu_approximate)
  gen = torch.Generator().manual_seed(seed)
  out_std = 0.02 / math.sqrt(2 * num_layers)  # GPT-2's scaled residual-output init.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.startswith('ln') or '.ln' in name:
        continue  # LayerNorm: scale 1, bias 0 (PyTorch's default already).
      if name.endswith('.bias'):
        nn.init.zeros_(p)
      elif name.endswith(('attn.out.weight', 'proj.weight')):
        nn.init.normal_(p, 0.0, out_std, generator=gen)
      else:
        nn.init.normal_(p, 0.0, 0.02, generator=gen)
  return model


def param_count(model: Any) -> int:
  """Number of trainable parameters (the tied embedding counted once)."""
  return sum(p.numel() for p in model.parameters() if p.requires_grad)


def make_optimizer(model: Any, lr: float = 1e-3) -> Any:
  """AdamW as in train/step.py: decay on matrices (ndim >= 2) except the position table."""
  torch = _require_torch()
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    (decay if p.ndim >= 2 and not name.startswith('pos.') else no_decay).append(p)
  groups = [{'params': decay, 'weight_decay': 0.1}, {'params': no_decay, 'weight_decay': 0.0}]
  kwargs = dict(lr=lr, betas=(0.9, 0.95), eps=1e-8)
  try:
    # Fused AdamW has a CPU kernel since torch 2.4: one pass over each tensor.
    return torch.optim.AdamW(groups, fused=True, **kwargs)
  except (RuntimeError, TypeError):
    return torch.optim.AdamW(groups, foreach=True, **kwargs)


def train_step(model: Any, optimizer: Any, tokens_BxL1: Any, forward: Any = None) -> float:
  """One step on tokens [B, L+1] (inputs [:, :-1], targets [:, 1:]); returns the loss.

  `forward` (default: `model`) is the callable that computes the logits, e.g. a compiled model.
  """
  return float(_step(model, optimizer, tokens_BxL1, forward))


def _step(model: Any, optimizer: Any, tokens_BxL1: Any, forward: Any = None, autocast=None):
  """train_step without the host synchronization: returns the loss as a device tensor.

  `autocast`: a context manager around the forward pass and the loss (mixed precision).
  """
  torch = _require_torch()
  import contextlib

  from torch.nn import functional as F

  forward = model if forward is None else forward
  with autocast if autocast is not None else contextlib.nullcontext():
    logits_BxLxV = forward(tokens_BxL1[:, :-1])
    loss = F.cross_entropy(
      logits_BxLxV.reshape(-1, logits_BxLxV.shape[-1]).float(), tokens_BxL1[:, 1:].reshape(-1)
    )
  optimizer.zero_grad(set_to_none=True)
  loss.backward()
  torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
  optimizer.step()
  return loss.detach()


def _resolve_shape(shape: dict, seq_len: int) -> dict:
  unknown = set(shape) - set(_SHAPE_KEYS)
  if unknown:
    raise ValueError(f'unknown shape keys {sorted(unknown)}; allowed: {list(_SHAPE_KEYS)}')
  for key in ('d_model', 'num_layers', 'num_heads'):
    if key not in shape:
      raise ValueError(f'shape needs {key!r} (got {shape})')
  s = dict(shape)
  # 0 or missing means "derive it", as in the JAX config (models/shapes.py).
  for key in ('d_model', 'num_layers', 'num_heads'):
    shapes.at_least_one(key, s[key])
  s['head_dim'] = shapes.derive_head_dim(s['d_model'], s['num_heads'], s.get('head_dim', 0))
  s['d_ff'] = s.get('d_ff') or shapes.default_d_ff(s['d_model'], 'gelu')
  s['vocab_size'] = s.get('vocab_size') or 256
  s['max_seq_len'] = s.get('max_seq_len') or seq_len
  if seq_len > s['max_seq_len']:
    raise ValueError(f'seq_len={seq_len} > max_seq_len={s["max_seq_len"]}; raise max_seq_len')
  return s


_DTYPES = ('float32', 'bfloat16')


def _check_device(device: str, dtype: str) -> None:
  """One-line errors for a device or dtype this run cannot use (torch is imported here)."""
  if dtype not in _DTYPES:
    raise ValueError(f'dtype={dtype!r}; use one of {_DTYPES}')
  if device != 'cpu' and device != 'cuda' and not device.startswith('cuda:'):
    raise ValueError(f"device={device!r}; use 'cpu', 'cuda' or 'cuda:N'")
  torch = _require_torch()
  if device.startswith('cuda'):
    if not torch.cuda.is_available():
      raise ValueError(
        f'device={device!r} but torch {torch.__version__} sees no CUDA GPU '
        '(torch.cuda.is_available() is False)'
      )
    index = int(device.split(':')[1]) if ':' in device else 0
    if index >= torch.cuda.device_count():
      raise ValueError(f'device={device!r} but torch sees {torch.cuda.device_count()} GPU(s)')


def benchmark(
  shape: dict,
  batch: int,
  seq_len: int,
  steps: int,
  warmup: int,
  compile: bool,
  threads: int | None = None,
  *,
  device: str = 'cpu',
  dtype: str = 'float32',
) -> dict:
  """Times `steps` training steps after `warmup` untimed ones on random tokens (seed 0).

  `shape` has the keys of `build` (head_dim, d_ff, vocab_size, max_seq_len may be 0 or missing:
  D/H, 4D, 256, seq_len). With compile=True the model is wrapped in torch.compile; if that fails
  the run falls back to eager and says why in 'compile_error'. `threads` sets torch's intra-op
  threads for this call only. `device`: 'cpu' or 'cuda[:N]'; `dtype`: 'float32', or 'bfloat16'
  for float32 parameters under bfloat16 autocast (on either device).
  """
  for key, value in (('batch', batch), ('seq_len', seq_len), ('steps', steps)):
    if value < 1:
      raise ValueError(f'{key} must be >= 1, got {value}')
  if warmup < 0 or (compile and warmup < 1):
    raise ValueError(f'warmup={warmup}: use >= 1 with compile=True (it absorbs compilation)')
  if threads is not None and threads < 1:
    raise ValueError(f'threads must be >= 1 or None, got {threads}')
  s = _resolve_shape(shape, seq_len)
  _check_device(device, dtype)
  torch = _require_torch()
  cuda = device.startswith('cuda')

  old_threads = torch.get_num_threads()
  old_tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
  if threads is not None:
    torch.set_num_threads(threads)
  model = optimizer = forward = None
  try:
    if cuda:
      torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
      torch.cuda.reset_peak_memory_stats(device)
    model = build(**s).to(device)
    model.train()
    optimizer = make_optimizer(model)
    gen = torch.Generator().manual_seed(0)
    tokens_BxL1 = torch.randint(0, s['vocab_size'], (batch, seq_len + 1), generator=gen)
    tokens_BxL1 = tokens_BxL1.to(device)
    autocast = None
    if dtype == 'bfloat16':
      autocast = torch.autocast(device_type='cuda' if cuda else 'cpu', dtype=torch.bfloat16)

    def sync():
      if cuda:
        torch.cuda.synchronize(device)

    forward, compiled, compile_error = model, False, None
    if compile:
      try:
        forward, compiled = torch.compile(model), True
      except Exception as e:  # noqa: BLE001 - any compiler failure means "run eager"
        compile_error = first_line(e)

    t0 = time.perf_counter()
    for _ in range(warmup):
      try:
        loss = _step(model, optimizer, tokens_BxL1, forward, autocast)
      except Exception as e:  # noqa: BLE001
        if not compiled:
          raise
        # torch.compile compiles lazily, so its failures surface at the first call.
        forward, compiled, compile_error = model, False, first_line(e)
        loss = _step(model, optimizer, tokens_BxL1, forward, autocast)
    sync()
    warmup_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    for _ in range(steps):
      loss = _step(model, optimizer, tokens_BxL1, forward, autocast)
    sync()
    step_s = (time.perf_counter() - t0) / steps
    final_loss = float(loss)
    peak_memory_gb = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None
    params = param_count(model)
  finally:
    torch.set_num_threads(old_threads)
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old_tf32
    del model, optimizer, forward
    if cuda:
      torch.cuda.empty_cache()  # give the memory back before JAX runs in this process

  return {
    'tokens_per_s': batch * seq_len / step_s,
    'step_time_s': step_s,
    'compile_time_s': warmup_s if compiled else None,
    'warmup_time_s': warmup_s,
    'params': params,
    'torch_version': torch.__version__,
    'compiled': compiled,
    'compile_error': compile_error,
    'threads': torch.get_num_threads() if threads is None else threads,
    'final_loss': final_loss,
    'device': device,
    'dtype': dtype,
    'peak_memory_gb': peak_memory_gb,
  }


def first_line(e: BaseException) -> str:
  """`Type: first line of the message` of an exception."""
  text = str(e).strip().splitlines()
  return f'{type(e).__name__}: {text[0] if text else ""}'


_first_line = first_line


def _define_flags() -> dict:
  """Command-line flags, defined only when run as a script: the JAX benchmark that imports this
  module has flags of the same names (seq_len, batch, ...)."""
  f = flags
  return {
    'd_model': f.DEFINE_integer('d_model', 512, 'Model width.'),
    'num_layers': f.DEFINE_integer('num_layers', 8, 'Blocks.'),
    'num_heads': f.DEFINE_integer('num_heads', 8, 'Attention heads.'),
    'head_dim': f.DEFINE_integer('head_dim', 0, 'Head dimension (0: d_model / num_heads).'),
    'd_ff': f.DEFINE_integer('d_ff', 0, 'MLP width (0: 4 * d_model).'),
    'vocab_size': f.DEFINE_integer('vocab_size', 256, 'Vocabulary size.'),
    'seq_len': f.DEFINE_integer('seq_len', 256, 'Sequence length.'),
    'batch': f.DEFINE_integer('batch', 8, 'Batch (sequences).'),
    'steps': f.DEFINE_integer('steps', 5, 'Timed steps.'),
    'warmup': f.DEFINE_integer('warmup', 2, 'Untimed steps first (compilation included).'),
    'compile': f.DEFINE_bool('compile', False, 'Use torch.compile (falls back to eager).'),
    'threads': f.DEFINE_integer('threads', 0, 'torch intra-op threads (0: torch default).'),
    'device': f.DEFINE_string('device', 'cpu', "'cpu' or 'cuda[:N]'."),
    'dtype': f.DEFINE_enum('dtype', 'float32', list(_DTYPES), 'bfloat16: autocast.'),
  }


def main(argv: list[str], fl: dict) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  v = {k: flag.value for k, flag in fl.items()}
  shape = {k: v[k] for k in _SHAPE_KEYS if k in v}
  shape['max_seq_len'] = v['seq_len']
  try:
    result = benchmark(
      shape,
      batch=v['batch'],
      seq_len=v['seq_len'],
      steps=v['steps'],
      warmup=v['warmup'],
      compile=v['compile'],
      threads=v['threads'] or None,
      device=v['device'],
      dtype=v['dtype'],
    )
  except (ValueError, ImportError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(json.dumps({**shape, 'seq_len': v['seq_len'], 'batch': v['batch'], **result}), flush=True)


if __name__ == '__main__':
  _flags = _define_flags()
  app.run(functools.partial(main, fl=_flags))
