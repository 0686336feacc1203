"""Learning-rate transfer across width, SP against muP (docs/MUP.md).

Three widths 8x apart end to end (32, 96, 256; 2 layers, heads of 32 dimensions), each at
five peak learning rates sqrt(2) apart, in the standard parametrization (one lr for every
parameter, init std 0.02) and in muP (models/mup.py, base width BASE_WIDTH): 30 runs of
STEPS steps of 8 x 128 bytes (307k tokens), warmup 20% then cosine to 10%, one evaluation at
the end on the common held-out set. Under muP the best rate should be the same grid point (or
one step away) at every width; under SP it moves. Measured (docs/MUP.md): the parabola minima
in log lr are 4.7e-3, 6.1e-3, 2.5e-3 (below the grid) at widths 32, 96, 256 in SP, and
6.9e-3, 5.4e-3, 5.8e-3 in muP; every model is still near the bigram level at this length.
44 min 40 s of runs at --parallel=1 on the shared 2-core machine under heavy load.

  python -m launch.sweep --sweep=experiments/sweeps/mup_transfer.py \
      --workdir=runs/mup_transfer --parallel=1
"""

import math

from experiments.sweeps import common

BASE_CONFIG = common.BASE_CONFIG
WIDTHS = (32, 256, 96)  # the two ends first: a stopped sweep still spans 8x
LAYERS = 2
STEPS = 300
BATCH = 8
BASE_WIDTH = 128
LRS = common.lr_grid(4e-3 * common.SQRT2, points=5)  # 2.83e-3 ... 1.13e-2
PARAMETRIZATIONS = ('sp', 'mup')


def shape(width: int) -> common.Shape:
  return common.Shape(LAYERS, width, common.heads_for(width, 32))


def overrides(s: common.Shape, lr: float, parametrization: str) -> dict:
  """One run: `s` for STEPS steps at peak `lr` in `parametrization`, one final evaluation."""
  out = {**s.overrides(), **common.train_overrides(STEPS, lr, global_batch=BATCH, evals=1)}
  out['train.warmup_steps'] = STEPS // 5
  out['checkpoint.every'] = STEPS
  if parametrization == 'mup':
    out.update(common.mup_overrides(BASE_WIDTH))
  out.update({'tags.sweep': 'mup_transfer', 'tags.group': parametrization})
  out['tags.tokens'] = STEPS * BATCH * common.SEQ_LEN
  return out


def get_sweep() -> list[tuple[str, dict]]:
  # Per width, the grid from its centre outwards, both parametrizations at each rate: a sweep
  # stopped early still holds the middle of every grid.
  middle = LRS[len(LRS) // 2]
  by_distance = sorted(LRS, key=lambda lr: (abs(math.log(lr / middle)), lr))
  runs = []
  for width in WIDTHS:
    s = shape(width)
    for lr in by_distance:
      for p in PARAMETRIZATIONS:
        make = lambda lr, s=s, p=p: overrides(s, lr, p)  # noqa: E731
        runs += common.grid_runs(s.name, make, [lr], prefix=f'{p}-')
  return runs
