"""Training-step benchmark: tokens/s, MFU, HFU, memory and compile time per model shape.

  python -m benchmarks.train_step --shapes=d512.L8.H8 --seq_len=256 --batch=8 --torch
  python -m benchmarks.train_step --shapes=gpt3.175B.16 --compile_only --scan_layers

A shape is `dD.LN.HH` (d_model, layers, heads; head_dim = D/H, d_ff = 4D) or `gpt3.NAME` (full
size) or `gpt3.NAME.F` (GPT-3 NAME with its width divided by F, layers and heads kept).

MFU uses the PaLM formula (models/accounting.py: 6N + 12*L*H*Dh*T, full T x T attention, no
credit for causal masking) against the peak of the devices: the vendor table on GPU/TPU, and on
CPU this machine's float32 matmul rate measured in the same run. HFU adds the recomputed
forward when remat='full'. The step is the real jitted train step (AdamW, clipping, donation)
on a device-resident random batch, timed after warm-up with one block at the end.
"""

import json
import resource
import sys
import time

import jax
import numpy as np
from absl import app, flags

from experiments.configs import default
from models import accounting, attention, gpt3
from models.transformer import ModelConfig
from train import metrics, sharding
from train.step import make_trainer

_SHAPES = flags.DEFINE_list('shapes', ['d256.L4.H4', 'd512.L8.H8', 'd768.L12.H12'], 'Shapes.')
_SEQ = flags.DEFINE_integer('seq_len', 256, 'Sequence length.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Global batch (sequences).')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps.')
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.')
_VOCAB = flags.DEFINE_integer('vocab', 256, 'Vocabulary size.')
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_REMAT = flags.DEFINE_enum('remat', 'none', ['none', 'full', 'dots'], 'Rematerialization.')
_SCAN = flags.DEFINE_bool('scan_layers', False, 'Scan over layers.')
_IMPL = flags.DEFINE_enum('attention_impl', 'auto', list(attention.IMPLS), 'Attention.')
_MESH = flags.DEFINE_string('mesh', 'data=-1', 'Mesh, e.g. data=2,fsdp=2,tensor=2.')
_COMPILE_ONLY = flags.DEFINE_bool('compile_only', False, 'Only measure compile time.')
_TORCH = flags.DEFINE_bool('torch', True, 'Also time the PyTorch reference, if installed.')
_TORCH_COMPILE = flags.DEFINE_bool('torch_compile', True, 'Use torch.compile if it works.')
_OUT = flags.DEFINE_string('out', '', 'Append one JSON line per shape to this file.')


def model_overrides(shape: str) -> dict:
  """config.model overrides for a shape string (see the module docstring)."""
  parts = shape.split('.')
  if parts[0] == 'gpt3':
    if len(parts) == 2:
      return gpt3.full(parts[1])
    return gpt3.reduced(parts[1], float(parts[2]))
  try:
    d, layers, heads = (int(p[1:]) for p in parts)
  except ValueError:
    raise ValueError(f'bad shape {shape!r}: use dD.LN.HH or gpt3.NAME[.FACTOR]') from None
  return dict(d_model=d, num_layers=layers, num_heads=heads, head_dim=0, d_ff=0)


def bench_config(shape: str):
  c = default.get_config()
  c.model.update(model_overrides(shape))
  c.model.update(dict(
      vocab_size=_VOCAB.value, max_seq_len=_SEQ.value, dtype=_DTYPE.value, remat=_REMAT.value,
      scan_layers=_SCAN.value, attention_impl=_IMPL.value,
  ))  # fmt: skip
  c.data.seq_len = _SEQ.value
  c.train.update(dict(global_batch=_BATCH.value, steps=1000, warmup_steps=10))
  for item in _MESH.value.split(','):
    axis, size = item.split('=')
    c.mesh[axis] = int(size)
  return c


def peak_memory_bytes() -> tuple[int, str]:
  dev = jax.devices()[0]
  stats = dev.memory_stats() if hasattr(dev, 'memory_stats') else None
  if stats and 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device peak'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'process max RSS'


def bench_shape(shape: str, peak: float) -> dict:
  config = bench_config(shape)
  model_cfg = ModelConfig.from_config(config.model)
  mesh = sharding.make_mesh(config.mesh)
  trainer = make_trainer(config, model_cfg, mesh)
  counts = accounting.param_counts(model_cfg)
  b, t = _BATCH.value, _SEQ.value
  x = np.random.default_rng(0).integers(0, _VOCAB.value, (b, t + 1)).astype(np.int32)
  batch = jax.device_put(
    {'inputs': x[:, :-1], 'targets': x[:, 1:], 'segment_ids': np.ones((b, t), np.int32)},
    trainer.batch_sharding,
  )
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      trainer.abstract_state, trainer.state_shardings,
  )  # fmt: skip
  t0 = time.perf_counter()
  step = trainer.train_step.lower(abstract, batch).compile()
  compile_s = time.perf_counter() - t0
  row = {
      'shape': shape, 'd_model': model_cfg.d_model, 'layers': model_cfg.num_layers,
      'heads': model_cfg.num_heads, 'head_dim': model_cfg.head_dim, 'seq_len': t, 'batch': b,
      'params': counts['total'], 'params_nonembed': counts['nonembedding'],
      'dtype': model_cfg.dtype, 'remat': model_cfg.remat, 'scan_layers': model_cfg.scan_layers,
      'compile_s': round(compile_s, 2), 'device': jax.devices()[0].device_kind,
      'num_devices': jax.device_count(),
  }  # fmt: skip
  if _COMPILE_ONLY.value:
    return row
  state = trainer.init()
  for _ in range(_WARMUP.value):
    state, m = step(state, batch)
  jax.block_until_ready(m)
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, m = step(state, batch)  # no host round-trip inside the timed loop
  jax.block_until_ready((state, m))
  step_s = (time.perf_counter() - t0) / _STEPS.value
  tokens_per_s = b * t / step_s
  model_flops = accounting.flops_per_token(model_cfg, t) * tokens_per_s
  hw_flops = accounting.hardware_flops_per_token(model_cfg, t) * tokens_per_s
  mem, mem_kind = peak_memory_bytes()
  row.update({
      'step_s': step_s, 'tokens_per_s': tokens_per_s, 'model_tflops': model_flops / 1e12,
      'mfu': model_flops / peak if peak else None, 'hfu': hw_flops / peak if peak else None,
      'peak_memory_gb': mem / 1e9, 'memory_kind': mem_kind, 'final_loss': float(m['loss']),
  })  # fmt: skip
  if _TORCH.value:
    row.update(torch_row(model_cfg, b, t))
  return row


def torch_row(model_cfg: ModelConfig, b: int, t: int) -> dict:
  from benchmarks import torch_reference

  if not torch_reference.available():
    return {'torch': 'not installed (pip install torch==2.13.0)'}
  shape = dict(
      d_model=model_cfg.d_model, num_layers=model_cfg.num_layers, num_heads=model_cfg.num_heads,
      head_dim=model_cfg.head_dim, d_ff=model_cfg.d_ff, vocab_size=model_cfg.vocab_size,
      max_seq_len=t, gelu_approximate='tanh',  # jax.nn.gelu's default, as GPT-2/3 use
  )  # fmt: skip
  r = torch_reference.benchmark(
      shape, batch=b, seq_len=t, steps=_STEPS.value, warmup=_WARMUP.value + 1,
      compile=_TORCH_COMPILE.value,
  )  # fmt: skip
  return {
    'torch_tokens_per_s': r['tokens_per_s'],
    'torch_compiled': r['compiled'],
    'torch_version': r['torch_version'],
  }


def main(argv: list[str]) -> None:
  del argv
  if _COMPILE_ONLY.value:
    peak, src = 0.0, 'not measured'
  elif jax.devices()[0].platform == 'cpu':
    peak, src = metrics.measure_cpu_matmul_flops(n=2048, repeats=5), 'measured f32 2048^3 matmul'
  else:
    peak, src = metrics.peak_flops()
  print(f'# {jax.device_count()} x {jax.devices()[0].device_kind}; peak {peak / 1e12:.3f} '
        f'TFLOP/s ({src}); jax {jax.__version__}', flush=True)  # fmt: skip
  for shape in _SHAPES.value:
    row = bench_shape(shape, peak)
    row.update({'peak_tflops': peak / 1e12, 'peak_source': src, 'date': time.strftime('%Y-%m-%d')})
    line = json.dumps(row)
    print(line, flush=True)
    if _OUT.value:
      with open(_OUT.value, 'a') as f:
        f.write(line + '\n')
    if 'tokens_per_s' in row:
      ratio = ''
      if isinstance(row.get('torch_tokens_per_s'), float):
        torch_tps = row['torch_tokens_per_s']
        ratio = f'  torch {torch_tps:,.0f} tok/s (JAX/torch {row["tokens_per_s"] / torch_tps:.2f}x)'
      print(
        f'{shape}: {row["tokens_per_s"]:,.0f} tok/s, step {row["step_s"] * 1e3:.1f} ms, '
        f'MFU {row["mfu"]:.1%}, compile {row["compile_s"]:.1f}s{ratio}',
        file=sys.stderr,
      )
    else:
      print(f'{shape}: compile {row["compile_s"]:.1f}s', file=sys.stderr)


if __name__ == '__main__':
  app.run(main)
