"""Training-step benchmark: tokens/s, MFU, HFU, memory and compile time per model shape.

  python -m benchmarks.train_step --shapes=d512.L8.H8 --seq_len=256 --batch=8 --torch
  python -m benchmarks.train_step --shapes=gpt3.175B.16 --compile_only --scan_layers

A shape is `dD.LN.HH` (d_model, layers, heads; head_dim = D/H, d_ff = 4D) or `gpt3.NAME` (full
size) or `gpt3.NAME.F` (GPT-3 NAME with its width divided by F, layers and heads kept).

MFU uses the PaLM formula (models/shapes.py: 6N + 12*Ly*H*Dh*L, full L x L attention, no
credit for causal masking) against the peak of the devices: the vendor table on GPU/TPU, and on
CPU this machine's float32 matmul rate measured in the same run. HFU adds the recomputed
forward when remat='full'. The step is the real jitted train step (AdamW, clipping, donation)
on a device-resident random batch, timed after warm-up with one block at the end.

--config (default experiments/configs/default.py, with --config.KEY=VALUE overrides) is the
base; the shape flags override it. --attention_impl is passed through to
model.attention_impl as given ('' keeps the config's default). --deterministic adds
--xla_gpu_deterministic_ops=true to XLA_FLAGS, --xla_flags adds any others; the flags are
checked without starting JAX's backend, then XLA_FLAGS is set, then the machine is looked at
(XLA reads XLA_FLAGS once, when the backend starts). With --torch (the default, when torch is
installed) the PyTorch reference (torch_reference.py) runs on the same shape, dtype and batch,
on the GPU when JAX runs on one (bf16 autocast, flash attention, fused AdamW, torch.compile),
before JAX in the same process; JAX then does not preallocate GPU memory. The row gets the
reference's tokens/s, MFU, peak memory and jax_over_torch. --torch_only times the reference
alone (its own process; benchmarks.report pairs it with our rows of the same shape).
benchmarks/gpu_check.sh runs the whole GPU table; benchmarks/profile.py shows where a step's
time goes.
"""

import dataclasses
import json
import os
import resource
import shlex
import sys
import time

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from core import cli
from experiments.configs import default
from models import accounting, gpt3, shapes
from models.transformer import ModelConfig
from train import metrics, sharding, validate
from train.step import compile_train_step, make_trainer

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Base config (default: experiments/configs/default.py); flags below override.'
)
_SHAPES = flags.DEFINE_list('shapes', ['d256.L4.H4', 'd512.L8.H8', 'd768.L12.H12'], 'Shapes.')
_SEQ = flags.DEFINE_integer('seq_len', 256, 'Sequence length.', lower_bound=1)
_BATCH = flags.DEFINE_integer('batch', 8, 'Global batch (sequences).', lower_bound=1)
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps.', lower_bound=1)
_WARMUP = flags.DEFINE_integer('warmup', 2, 'Untimed steps after compilation.', lower_bound=0)
_VOCAB = flags.DEFINE_integer('vocab', 256, 'Vocabulary size.', lower_bound=1)
_DTYPE = flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Compute dtype.')
_REMAT = flags.DEFINE_enum('remat', 'none', list(shapes.REMATS), 'Rematerialization.')
_SCAN = flags.DEFINE_bool('scan_layers', False, 'Scan over layers.')
_IMPL = flags.DEFINE_string(
  'attention_impl', '', "model.attention_impl, passed through ('': the config's default)."
)
_DETERMINISTIC = flags.DEFINE_bool(
  'deterministic',
  False,
  'Deterministic GPU kernels: XLA_FLAGS += --xla_gpu_deterministic_ops=true (and '
  'config.train.deterministic=True where the config has it).',
)
_MESH = flags.DEFINE_string('mesh', 'data=-1', 'Mesh, e.g. data=2,fsdp=2,tensor=2.')
_NUM_DEVICES = flags.DEFINE_integer('num_devices', 0, 'Use the first N devices (0: all).')
_COMPILE_ONLY = flags.DEFINE_bool('compile_only', False, 'Only measure compile time.')
_TORCH = flags.DEFINE_bool('torch', True, 'Also time the PyTorch reference, if installed.')
_TORCH_COMPILE = flags.DEFINE_bool('torch_compile', True, 'Use torch.compile if it works.')
_TORCH_ONLY = flags.DEFINE_bool(
  'torch_only', False, 'Time only the PyTorch reference (its own process: JAX takes no memory).'
)
_XLA_FLAGS = flags.DEFINE_string(
  'xla_flags', '', 'Appended to XLA_FLAGS before JAX starts its backend, e.g. --xla_dump_to=DIR.'
)
_LABEL = flags.DEFINE_string('label', '', 'A name stored in each output row.')
_OUT = flags.DEFINE_string('rows_out', '', 'Append one JSON line per shape to this file.')

DETERMINISTIC_XLA_FLAG = '--xla_gpu_deterministic_ops=true'


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
  c = (_CONFIG.value or default.get_config()).copy_and_resolve_references()
  c.model.update(model_overrides(shape))
  c.model.update(
    dict(
      vocab_size=_VOCAB.value,
      max_seq_len=_SEQ.value,
      dtype=_DTYPE.value,
      remat=_REMAT.value,
      scan_layers=_SCAN.value,
    )
  )
  if _IMPL.value:
    c.model.attention_impl = _IMPL.value
  c.data.seq_len = _SEQ.value
  c.train.update(dict(global_batch=_BATCH.value, steps=1000, warmup_steps=10))
  if _DETERMINISTIC.value and 'deterministic' in c.train:
    c.train.deterministic = True
  for item in _MESH.value.split(','):
    axis, _, size = item.partition('=')
    if axis not in c.mesh or not size.lstrip('-').isdigit():
      raise ValueError(f'--mesh={_MESH.value}: use AXIS=SIZE,... over {list(c.mesh)}')
    c.mesh[axis] = int(size)
  return c


def shapes() -> list[str]:
  return list(_SHAPES.value)


def check_flags() -> None:
  """Bad flags: one line on stderr and exit 2, before anything is compiled or measured.

  Nothing here starts JAX's backend: the environment it reads is set afterwards
  (configure_environment), and what needs the machine is checked after that (check_machine).
  """
  try:
    for key, value in (('steps', _STEPS.value), ('batch', _BATCH.value), ('seq_len', _SEQ.value)):
      if value < 1:
        raise ValueError(f'--{key} must be >= 1, got {value}')
    if _NUM_DEVICES.value < 0:
      raise ValueError(f'--num_devices must be >= 0, got {_NUM_DEVICES.value}')
    if _WARMUP.value < 0:
      raise ValueError(f'--warmup must be >= 0, got {_WARMUP.value}')
    if not _SHAPES.value:
      raise ValueError('--shapes is empty')
    for item in _MESH.value.split(','):
      if item.count('=') != 1:
        raise ValueError(f'--mesh={_MESH.value!r}: use axis=size pairs, e.g. data=2,fsdp=2')
    if _TORCH_ONLY.value and _COMPILE_ONLY.value:
      raise ValueError('--torch_only times the reference; it cannot be --compile_only')
    for shape in _SHAPES.value:
      validate.check_config(bench_config(shape), on_this_machine=False)
  except (ValueError, KeyError, AttributeError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def describe() -> str:
  """The run's settings in one line (for the profile's heading)."""
  c = bench_config(_SHAPES.value[0])
  return (
    f'T={_SEQ.value} B={_BATCH.value} vocab={_VOCAB.value} {_DTYPE.value} '
    f'attention={c.model.attention_impl} remat={_REMAT.value} scan_layers={_SCAN.value}'
    + (' deterministic' if _DETERMINISTIC.value else '')
  )


def devices() -> list:
  return jax.devices()[: _NUM_DEVICES.value or None]


@dataclasses.dataclass
class Bench:
  """One shape's trainer, its device-resident random batch, and the step's abstract inputs."""

  config: object
  model_cfg: ModelConfig
  trainer: object
  batch: dict
  abstract_state: object

  def compile(self):
    """The compiled step (auto's fused attention falls back to XLA if it cannot compile)."""
    mesh = self.trainer.batch_sharding.mesh
    self.trainer, step = compile_train_step(
      self.trainer,
      self.model_cfg,
      lambda cfg: make_trainer(self.config, cfg, mesh),
      self.abstract_state,
      self.batch,
    )
    return step


def build(shape: str) -> Bench:
  config = bench_config(shape)
  model_cfg = ModelConfig.from_config(config.model)
  mesh = sharding.make_mesh(config.mesh, devices())
  trainer = make_trainer(config, model_cfg, mesh)
  b, t = _BATCH.value, _SEQ.value
  x = np.random.default_rng(0).integers(0, _VOCAB.value, (b, t + 1)).astype(np.int32)
  batch = jax.device_put(
    {'inputs': x[:, :-1], 'targets': x[:, 1:], 'segment_ids': np.ones((b, t), np.int32)},
    trainer.batch_sharding,
  )
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    trainer.abstract_state,
    trainer.state_shardings,
  )
  return Bench(config, model_cfg, trainer, batch, abstract)


def peak_memory_bytes() -> tuple[int, str]:
  dev = jax.devices()[0]
  stats = dev.memory_stats() if hasattr(dev, 'memory_stats') else None
  if stats and 'peak_bytes_in_use' in stats:
    return int(stats['peak_bytes_in_use']), 'device peak'
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, 'process max RSS'


def bench_shape(shape: str, peak: float) -> dict:
  bench = build(shape)
  model_cfg, batch = bench.model_cfg, bench.batch
  counts = accounting.param_counts(model_cfg)
  b, t = _BATCH.value, _SEQ.value
  t0 = time.perf_counter()
  step = bench.compile()
  compile_s = time.perf_counter() - t0
  row = {
    'shape': shape,
    'd_model': model_cfg.d_model,
    'layers': model_cfg.num_layers,
    'heads': model_cfg.num_heads,
    'head_dim': model_cfg.head_dim,
    'seq_len': t,
    'batch': b,
    'vocab': model_cfg.vocab_size,
    'params': counts['total'],
    'params_nonembed': counts['nonembedding'],
    'dtype': model_cfg.dtype,
    'remat': model_cfg.remat,
    'scan_layers': model_cfg.scan_layers,
    'attention_impl': model_cfg.attention_impl,
    'deterministic': _DETERMINISTIC.value,
    'compile_s': round(compile_s, 2),
    'device': jax.devices()[0].device_kind,
    'platform': jax.devices()[0].platform,
    'num_devices': len(devices()),
  }
  if _COMPILE_ONLY.value:
    return row
  state = bench.trainer.init()
  for _ in range(_WARMUP.value):
    state, m = step(state, batch)
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for _ in range(_STEPS.value):
    state, m = step(state, batch)  # no host round-trip inside the timed loop
  jax.block_until_ready((state, m))
  step_s = (time.perf_counter() - t0) / _STEPS.value
  tokens_per_s = b * t / step_s
  model_flops = accounting.flops_per_token(model_cfg, t) * tokens_per_s
  hw_flops = accounting.hardware_flops_per_token(model_cfg, t) * tokens_per_s
  mem, mem_kind = peak_memory_bytes()
  row.update(
    {
      'step_s': step_s,
      'tokens_per_s': tokens_per_s,
      'model_tflops': model_flops / 1e12,
      'mfu': model_flops / peak if peak else None,
      'hfu': hw_flops / peak if peak else None,
      'peak_memory_gb': mem / 1e9,
      'memory_kind': mem_kind,
      'final_loss': float(m['loss']),
    }
  )
  return row


def reference_only_row(shape: str) -> dict:
  """--torch_only: the shape's keys (which the report pairs with ours), no JAX step."""
  m = ModelConfig.from_config(bench_config(shape).model)
  return {
    'shape': shape,
    'd_model': m.d_model,
    'layers': m.num_layers,
    'heads': m.num_heads,
    'seq_len': _SEQ.value,
    'batch': _BATCH.value,
    'vocab': m.vocab_size,
    'dtype': m.dtype,
    'torch_only': True,
    'device': jax.devices()[0].device_kind,
    'num_devices': len(devices()),
  }


def torch_row(shape: str, peak: float, device: str) -> dict:
  """The PyTorch reference (torch_reference.py) on the same shape, dtype, batch and device."""
  from benchmarks import torch_reference

  if not torch_reference.available():
    return {'torch': 'not installed (pip install torch==2.13.0)'}
  model_cfg = ModelConfig.from_config(bench_config(shape).model)
  b, t = _BATCH.value, _SEQ.value
  ref_shape = dict(
    d_model=model_cfg.d_model,
    num_layers=model_cfg.num_layers,
    num_heads=model_cfg.num_heads,
    head_dim=model_cfg.head_dim,
    d_ff=model_cfg.d_ff,
    vocab_size=model_cfg.vocab_size,
    max_seq_len=t,
    gelu_approximate='tanh',  # jax.nn.gelu's default, as GPT-2/3 use
  )
  try:
    r = torch_reference.benchmark(
      ref_shape,
      batch=b,
      seq_len=t,
      steps=_STEPS.value,
      warmup=_WARMUP.value + 1,
      compile=_TORCH_COMPILE.value,
      device=device,
      dtype=_DTYPE.value,
    )
  except Exception as e:  # noqa: BLE001 - e.g. out of memory: recorded, ours still runs
    return {'torch': f'failed: {torch_reference.first_line(e)}'}
  tps = r['tokens_per_s']
  flops = accounting.flops_per_token(model_cfg, t) * tps
  return {
    'torch_tokens_per_s': tps,
    'torch_mfu': flops / peak if peak else None,
    'torch_peak_memory_gb': r['peak_memory_gb'],
    'torch_compiled': r['compiled'],
    'torch_compile_error': r['compile_error'],
    'torch_device': r['device'],
    'torch_dtype': r['dtype'],
    'torch_version': r['torch_version'],
  }


def _torch_device() -> str | None:
  """Where the reference runs: on the GPU when JAX runs on one, else on the CPU."""
  from benchmarks import torch_reference

  if _TORCH_ONLY.value:
    return 'cuda' if jax.devices()[0].platform == 'gpu' else 'cpu'
  if not _TORCH.value or _COMPILE_ONLY.value or not torch_reference.available():
    return None
  return 'cuda' if jax.devices()[0].platform == 'gpu' else 'cpu'


def configure_environment(extra_xla_flags: tuple[str, ...] = ()) -> None:
  """XLA_FLAGS and JAX's GPU memory settings, which JAX reads only when its backend starts.

  Called after check_flags and before anything touches a device; a backend that has already
  started (a caller's bug) is said in one warning line rather than ignored silently.
  """
  from jax._src import xla_bridge

  added = [*extra_xla_flags, *_XLA_FLAGS.value.split()]
  if _DETERMINISTIC.value:
    added.append(DETERMINISTIC_XLA_FLAG)
  current = os.environ.get('XLA_FLAGS', '')
  added = [f for f in added if f not in current.split()]
  if added:
    os.environ['XLA_FLAGS'] = ' '.join([current, *added]).strip()
  from benchmarks import torch_reference

  if (_TORCH.value or _TORCH_ONLY.value) and not _COMPILE_ONLY.value:
    if torch_reference.cuda_available():
      # PyTorch shares the GPU: JAX must not take 75% of its memory up front.
      os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  if added and xla_bridge.backends_are_initialized():
    logging.warning('XLA_FLAGS %s set after JAX started its backend: not in effect', added)


def check_machine() -> None:
  """What needs the machine (a GPU for cudnn, the mesh's devices): starts JAX's backend."""
  try:  # every shape's config, before the minutes of measuring
    for shape in _SHAPES.value:
      config = bench_config(shape)
      validate.check_config(config, num_devices=len(devices()))
  except ValueError as e:
    cli.fail(str(e))


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; give every setting as --flag=value')
  check_flags()
  configure_environment()
  check_machine()
  if _COMPILE_ONLY.value:
    peak, src = 0.0, 'not measured'
  elif jax.devices()[0].platform == 'cpu':
    peak, src = metrics.measure_cpu_matmul_flops(n=2048, repeats=5), 'measured f32 2048^3 matmul'
  else:
    peak, src = metrics.peak_flops()
    peak = peak / jax.device_count() * len(devices())  # the devices this run uses
  print(
    f'# {len(devices())} x {jax.devices()[0].device_kind}; peak {peak / 1e12:.3f} '
    f'TFLOP/s ({src}); jax {jax.__version__}',
    flush=True,
  )
  # The reference runs first, for every shape: it gives its GPU memory back when done, while
  # JAX's allocator keeps what it took until the process ends.
  device = _torch_device()
  torch_rows = {s: torch_row(s, peak, device) for s in _SHAPES.value} if device else {}
  # The command as one would retype it: without where this run's rows went or their name.
  args = [a for a in sys.argv[1:] if not a.startswith(('--rows_out=', '--label='))]
  command = shlex.join(['python', '-m', 'benchmarks.train_step', *args])
  for shape in _SHAPES.value:
    row = reference_only_row(shape) if _TORCH_ONLY.value else bench_shape(shape, peak)
    row.update(torch_rows.get(shape, {}))
    if isinstance(row.get('torch_tokens_per_s'), float) and 'tokens_per_s' in row:
      row['jax_over_torch'] = row['tokens_per_s'] / row['torch_tokens_per_s']
    row.update(
      {
        'peak_tflops': peak / 1e12,
        'peak_source': src,
        'date': time.strftime('%Y-%m-%d'),
        'jax_version': jax.__version__,
        'xla_flags': os.environ.get('XLA_FLAGS', ''),
        'label': _LABEL.value,
        'command': command,
      }
    )
    line = json.dumps(row)
    print(line, flush=True)
    if _OUT.value:
      with open(_OUT.value, 'a') as f:
        f.write(line + '\n')
    if 'tokens_per_s' in row:
      ratio = ''
      if 'jax_over_torch' in row:
        torch_tps = row['torch_tokens_per_s']
        ratio = f'  torch {torch_tps:,.0f} tok/s (JAX/torch {row["jax_over_torch"]:.2f}x)'
      mfu = f'{row["mfu"]:.1%}' if row['mfu'] is not None else 'n/a'
      print(
        f'{shape}: {row["tokens_per_s"]:,.0f} tok/s, step {row["step_s"] * 1e3:.1f} ms, '
        f'MFU {mfu}, compile {row["compile_s"]:.1f}s{ratio}',
        file=sys.stderr,
      )
    elif 'compile_s' in row:
      print(f'{shape}: compile {row["compile_s"]:.1f}s', file=sys.stderr)
    else:
      print(
        f'{shape}: PyTorch reference {row.get("torch_tokens_per_s", row.get("torch"))}',
        file=sys.stderr,
      )


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
