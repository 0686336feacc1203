"""Shared helpers of the sweep files: model shapes, parameter/FLOP counts, the LR and batch rule.

Counts are models/shapes.py's closed forms of this codebase's model, so a sweep file loads
without importing JAX.

The LR and batch rule of the ladders (docs/SWEEPS.md, docs/MUP.md):
* learning rate: `width_lr`, lr(d) = 3e-3 * sqrt(192 / d_model), the rule the demo measured
  (lr_sweep.py: best 4e-3 at width 192 on 600k tokens, the narrow end able to take more).
  Kaplan et al.'s eq. D.1 (`kaplan_lr`, 1.2e-3 to 1.8e-3 at these sizes) was measured 2-4x
  too small here and is kept only for reference. Per-size tuning (`lr_grid`, `grid_runs`,
  tuned_ladder.py) and muP transfer (`mup_overrides`, mup_ladder.py) are the alternatives.
* batch: the same 16 x 128 tokens for every size (scaling_cpu.py). Every run is far below
  the critical batch size (Kaplan et al. Sec. 5.1: millions of tokens at these losses),
  where the loss after D tokens hardly depends on how they are batched; one batch for all
  sizes makes "trained on the same tokens" also "the same number of steps".
* schedule: linear warmup over 10% of the steps, cosine decay to 10% of the peak at the last
  step (so every run's schedule ends with the run: runs of different lengths are separate
  runs, never checkpoints of one long run).
GPT-3 rows use Table 2.1's own lr and batch instead (gpt3_reduced.py).
"""

import dataclasses
import math
from collections.abc import Callable, Sequence

from models import shapes

BASE_CONFIG = 'experiments/configs/scaling_cpu.py'
BYTE_VOCAB = 257  # data/tokenizer.py's ByteTokenizer: 256 bytes + end of document.
SEQ_LEN = 128  # scaling_cpu.py's data.seq_len
GLOBAL_BATCH = 16  # scaling_cpu.py's train.global_batch
WARMUP_FRACTION = 0.1


@dataclasses.dataclass(frozen=True)
class Shape:
  """A GPT-3 decoder shape (GELU MLP); 0 derives head_dim and d_ff as models/shapes.py does."""

  num_layers: int
  d_model: int
  num_heads: int
  head_dim: int = 0
  d_ff: int = 0

  def __post_init__(self):
    for key in ('num_layers', 'd_model', 'num_heads'):
      shapes.at_least_one(key, getattr(self, key))
    shapes.derive_head_dim(self.d_model, self.num_heads, self.head_dim)

  @property
  def dh(self) -> int:
    return shapes.derive_head_dim(self.d_model, self.num_heads, self.head_dim)

  @property
  def ff(self) -> int:
    return self.d_ff or shapes.default_d_ff(self.d_model, 'gelu')

  @property
  def name(self) -> str:
    return f'L{self.num_layers}-d{self.d_model}-h{self.num_heads}'

  @property
  def aspect(self) -> float:
    """d_model / num_layers (GPT-3: 43 to 128)."""
    return self.d_model / self.num_layers

  def nonembed(self) -> int:
    return nonembed_params(self)

  def overrides(self) -> dict:
    """`model.*` overrides, every size spelled out so sweep.json describes the model alone."""
    return {
      'model.num_layers': self.num_layers,
      'model.d_model': self.d_model,
      'model.num_heads': self.num_heads,
      'model.head_dim': self.dh,
      'model.d_ff': self.ff,
    }


def _dims(s: Shape) -> dict:
  return {
    'd_model': s.d_model,
    'num_layers': s.num_layers,
    'num_heads': s.num_heads,
    'head_dim': s.dh,
  }


def nonembed_params(s: Shape) -> int:
  """Non-embedding parameters of models/transformer.py (MHA, biases and LayerNorms included)."""
  return shapes.param_counts(vocab_size=BYTE_VOCAB, d_ff=s.ff, **_dims(s))['nonembedding']


def flops_per_token(s: Shape, seq_len: int = SEQ_LEN, vocab_size: int = BYTE_VOCAB) -> float:
  """Training FLOPs per token by PaLM's formula (models/shapes.py)."""
  n = nonembed_params(s)
  return shapes.flops_per_token(n, vocab_size=vocab_size, seq_len=seq_len, **_dims(s))


# The measured rule: peak lr LR_REF at width D_REF (lr_sweep.py), growing as 1/sqrt(width) below.
LR_REF, D_REF = 3e-3, 192


def width_lr(d_model: int) -> float:
  """lr(d) = LR_REF * sqrt(D_REF / d_model) (docs/SWEEPS.md, the learning-rate sweep)."""
  return LR_REF * (D_REF / d_model) ** 0.5


def kaplan_lr(n_nonembed: float) -> float:
  """Kaplan et al. 2020 eq. D.1: lr(N) = 0.003239 - 0.0001395 ln N."""
  lr = 0.003239 - 0.0001395 * math.log(n_nonembed)
  if n_nonembed < 1 or lr <= 0:
    raise ValueError(f'Kaplan lr rule undefined at N={n_nonembed:g} (valid for 1 <= N < 1.2e10)')
  return lr


def heads_for(d_model: int, head_dim: int = 32) -> int:
  """The head count dividing d_model whose head size is nearest `head_dim` (log scale)."""
  divisors = [h for h in range(1, d_model + 1) if d_model % h == 0]
  return min(divisors, key=lambda h: (abs(math.log(d_model / h / head_dim)), h))


def _twos(n: int) -> int:
  """The exponent of 2 in n (nicer widths first)."""
  return (n & -n).bit_length() - 1


def shape_at(n_target: int, num_layers: int, head_dim: int = 32, tol: float = 0.02) -> Shape:
  """The `num_layers`-deep shape (d_ff = 4d, attention width d) nearest `n_target` params.

  Among even widths within `tol` of the target, the one with the most factors of two (so it
  splits into heads of a regular size), then the nearest; heads from `heads_for`.
  """
  d0 = math.sqrt(n_target / (12 * num_layers))
  candidates = [d for d in range(max(2, 2 * int(d0 / 2) - 8), 2 * int(d0 / 2) + 10, 2)]

  def err(d: int) -> float:
    return abs(nonembed_params(Shape(num_layers, d, 1)) / n_target - 1)

  good = [d for d in candidates if err(d) <= tol]
  if not good:
    raise ValueError(f'no width gives {n_target:,} params at {num_layers} layers within {tol:.0%}')
  d = min(good, key=lambda d: (-_twos(d), err(d)))
  return Shape(num_layers, d, heads_for(d, head_dim))


def steps_for(tokens: float, global_batch: int = GLOBAL_BATCH, seq_len: int = SEQ_LEN) -> int:
  """Steps that see `tokens` tokens (rounded to the nearest step, at least 1)."""
  return max(1, round(tokens / (global_batch * seq_len)))


def train_overrides(
  steps: int,
  lr: float,
  global_batch: int = GLOBAL_BATCH,
  evals: int = 2,
  checkpoints: int = 2,
  max_interval: int = 500,
  log_points: int = 0,
) -> dict:
  """`train.*`, `eval.*`, `checkpoint.every` overrides of one run.

  At least `evals` evaluations (the last at the final step) and `checkpoints` saves (one at
  the end), and one of each every `max_interval` steps: a short run pays for two evaluations,
  a long one gets a learning curve and loses at most `max_interval` steps to an interruption.
  With `log_points`, the evaluations are that many log-spaced steps instead (eval.log_points),
  the last at the final step: curves over log compute, no periodic ones besides.
  """
  every = steps if log_points else max(1, min(max_interval, math.ceil(steps / evals)))
  return {
    'train.steps': steps,
    'train.global_batch': global_batch,
    'train.lr': float(f'{lr:.4g}'),
    'train.warmup_steps': max(1, round(WARMUP_FRACTION * steps)),
    'eval.every': every,
    **({'eval.log_points': log_points} if log_points else {}),
    'checkpoint.every': max(1, min(max_interval, math.ceil(steps / checkpoints))),
  }


def ladder_run(s: Shape, tokens: float, sweep: str, group: str = '', **tags) -> dict:
  """Overrides of one ladder run: `s` trained on `tokens` tokens at `width_lr` of its width."""
  steps = steps_for(tokens)
  out = {**s.overrides(), **train_overrides(steps, width_lr(s.d_model))}
  seen = steps * GLOBAL_BATCH * SEQ_LEN
  out.update({'tags.sweep': sweep, 'tags.group': group, 'tags.tokens': seen})
  out.update({f'tags.{k}': v for k, v in tags.items()})
  return out


def budget_name(flops: float) -> str:
  """1e13 -> '1e13', 3e13 -> '3e13' (path-safe, no '+')."""
  exp = math.floor(math.log10(flops))
  mant = flops / 10**exp
  return f'{mant:.3g}e{exp}'


SQRT2 = math.sqrt(2.0)


def lr_grid(center: float, points: int = 5, ratio: float = SQRT2) -> list[float]:
  """`points` learning rates a factor `ratio` apart, centred (geometrically) on `center`."""
  if points < 1 or center <= 0 or ratio <= 1:
    raise ValueError(
      f'lr grid needs points >= 1, center > 0, ratio > 1: {points}, {center}, {ratio}'
    )
  return [float(f'{center * ratio ** (i - (points - 1) / 2):.4g}') for i in range(points)]


def mup_overrides(base_width: int) -> dict:
  """`model.*` overrides of muP (models/mup.py) with hyperparameters tuned at `base_width`."""
  return {'model.parametrization': 'mup', 'model.mup_base_width': base_width}


def grid_runs(
  size: str,
  make: Callable[[float], dict],
  lrs: Sequence[float],
  seeds: Sequence[int] = (0,),
  prefix: str = '',
) -> list[tuple[str, dict]]:
  """One run per (peak lr, seed) of one size: `make(lr)` gives the run's overrides.

  Each run sets `seed` (the model's initialisation AND the data order, train/step.py and
  data/pipeline.py) and the tags the analysis groups by: tags.size = `size`, tags.lr = the
  peak lr, tags.seed. Runs are named '<prefix><size>-lr<lr>-s<seed>'.
  """
  if not lrs or not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise ValueError(f'{size}: a grid needs learning rates and distinct seeds >= 0')
  runs = []
  for lr in lrs:
    for seed in seeds:
      o = make(lr)
      o.update({'seed': seed, 'tags.size': size, 'tags.lr': o['train.lr'], 'tags.seed': seed})
      runs.append((f'{prefix}{size}-lr{o["train.lr"]:.3g}-s{seed}', o))
  return runs
