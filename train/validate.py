"""Range checks of a whole training config, run before anything is built, compiled or written.

Each check raises ValueError with one line that names the key, the bad value and what to do.
Shape rules of the model live in models/shapes.py (ModelConfig.from_config), optimizer and
schedule names in train/optim.py; they are called from here rather than restated. No JAX is
imported unless the check is for this machine (its platform, its devices for the mesh): a sweep
is planned (experiments/sweep_spec.py) without JAX.
"""

import math
from typing import NamedTuple

from models import shapes
from train import optim, profiling


def _int_at_least(config, key: str, low: int, what: str = '') -> None:
  value = _get(config, key)
  if not isinstance(value, int) or isinstance(value, bool) or value < low:
    hint = f' ({what})' if what else ''
    raise ValueError(f'{key}={value!r} must be an integer >= {low}{hint}')


def _finite(
  config,
  key: str,
  low: float,
  *,
  strict: bool,
  high: float | None = None,
  high_strict: bool = False,
) -> None:
  value = _get(config, key)
  ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
  ok = ok and (value > low if strict else value >= low)
  if ok and high is not None:
    ok = value < high if high_strict else value <= high
  if not ok:
    lo = f'> {low:g}' if strict else f'>= {low:g}'
    hi = '' if high is None else (f' and < {high:g}' if high_strict else f' and <= {high:g}')
    raise ValueError(f'{key}={value!r} must be a finite number {lo}{hi}')


def _get(config, key: str):
  for part in key.split('.'):
    config = config[part]
  return config


class Checked(NamedTuple):
  """What check_config decided: the model's shape (its vocabulary 0 until the tokenizer's is
  known, ModelConfig.with_vocab) and, on this machine, the mesh's (data, fsdp, tensor) sizes."""

  model: shapes.ModelConfig
  mesh_shape: tuple[int, ...] | None


def check_config(config, on_this_machine: bool = True, num_devices: int = 0) -> Checked:
  """Raises ValueError (one line) for any value that cannot make a working run.

  `on_this_machine=False` skips what only the machine that trains must provide (a GPU for
  cuDNN attention, the mesh's devices): a sweep may be planned on one machine and run on
  another. The mesh fills `num_devices` devices (0: every device of every process).
  """
  _int_at_least(config, 'train.steps', 1, 'the number of optimizer steps')
  _int_at_least(config, 'train.global_batch', 1, 'sequences per step')
  _int_at_least(config, 'train.grad_accum', 1)
  _int_at_least(config, 'train.warmup_steps', 0)
  _int_at_least(config, 'data.seq_len', 1, 'tokens per sequence')
  _int_at_least(config, 'eval.every', 1, 'evaluate every this many steps')
  _int_at_least(config, 'eval.batches', 1)
  _int_at_least(config, 'eval.batch_size', 1)
  _int_at_least(config, 'checkpoint.every', 1, 'save every this many steps')
  _int_at_least(config, 'checkpoint.max_to_keep', 1, 'a run must keep a checkpoint to resume')
  _int_at_least(config, 'log_every', 1, 'write a train record every this many steps')
  _int_at_least(config, 'seed', 0)
  if 'nan_patience' in config.train:
    _int_at_least(config, 'train.nan_patience', 1, 'non-finite steps in a row before stopping')
  if 'log_points' in config.eval:
    _int_at_least(config, 'eval.log_points', 0, 'extra log-spaced evaluations')
  if config.train.get('init_from'):
    step, steps = config.train.init_step, config.train.steps
    if not 0 < step < steps:
      raise ValueError(
        f'train.init_step={step} must be in [1, train.steps={steps}) when train.init_from is set'
      )
  _finite(config, 'train.lr', 0.0, strict=True)
  _finite(config, 'train.grad_clip', 0.0, strict=False)  # 0: no clipping
  _finite(config, 'train.weight_decay', 0.0, strict=False)
  _finite(config, 'train.min_lr_ratio', 0.0, strict=False, high=1.0)
  _finite(config, 'train.decay_fraction', 0.0, strict=False, high=1.0)
  _finite(config, 'train.b1', 0.0, strict=False, high=1.0, high_strict=True)
  _finite(config, 'train.b2', 0.0, strict=False, high=1.0, high_strict=True)
  _finite(config, 'train.eps', 0.0, strict=True)
  _finite(config, 'train.z_loss', 0.0, strict=False)
  _finite(config, 'model.init_std', 0.0, strict=True)
  _finite(config, 'peak_flops', 0.0, strict=False)
  optim.check(config.train, mup=config.model.get('parametrization', 'sp') == 'mup')
  profiling.window(config.train.get('profile_steps', ''), config.train.steps)
  # A fused kernel insisted on must exist on the machine that trains; planned for another
  # machine, the model's platform is '' and nothing is checked about the machine.
  fused = config.model.attention_impl in shapes.KERNEL_PLATFORM
  platform = _backend() if on_this_machine and fused else ''
  model = shapes.ModelConfig.from_config(config.model, platform=platform)
  mesh = shapes.mesh_shape(config.mesh, num_devices or _device_count()) if on_this_machine else None
  if model.pos_emb == 'learned' and config.data.seq_len > model.max_seq_len:
    raise ValueError(
      f'data.seq_len={config.data.seq_len} exceeds the position table '
      f'(model.max_seq_len={model.max_seq_len}); raise max_seq_len or use pos_emb=rope'
    )
  return Checked(model, mesh)


def _backend() -> str:
  """The platform JAX runs on. The first look at the machine is here, after the caller has set
  the environment that the backend reads when it starts."""
  import jax

  return jax.default_backend()


def _device_count() -> int:
  """Every device of every process: the mesh's to fill."""
  import jax

  return jax.device_count()
