"""IsoFLOP profiles at accelerator scale (Hoffmann et al. 2022, approach 2) on lm1b bytes.

For each compute budget C, five sizes around Chinchilla's optimum N ~ sqrt(C / 120) (20
tokens per parameter), each trained for the steps that spend C (PaLM FLOPs per token, as
models/accounting.py counts them); tags.budget_flops = C, so launch.compare fits a parabola
per budget and N_opt ~ C^a, printed beside Kaplan et al.'s 0.73 and Hoffmann et al.'s 0.50.
Same data, context, dtype and lr rule as accel_ladder.py. ACCEL picks the machine:

* ACCEL=gpu (default): C = 1e16, 3e16, 1e17; 7e17 FLOPs in all, about 50 min on one H100.
* ACCEL=v5p: C = 3e17, 1e18, 3e18; 2.2e19 FLOPs, about 3 h on a v5p-32.

  ACCEL=gpu python -m launch.sweep --sweep=experiments/sweeps/accel_isoflop.py --workdir=runs/iso
"""

import math
import os

from experiments.sweeps import accel_ladder as ladder
from experiments.sweeps import common

BASE_CONFIG = common.BASE_CONFIG
ACCEL = os.environ.get('ACCEL', 'gpu')  # read here: accel_ladder may have been imported before
BUDGETS = {'gpu': (1e16, 3e16, 1e17), 'v5p': (3e17, 1e18, 3e18)}
if ACCEL not in BUDGETS:
  raise ValueError(f'ACCEL={ACCEL!r}: choose one of {sorted(BUDGETS)}')
SIZES_PER_BUDGET = 5
MIN_STEPS = 100
CANDIDATES = [
  (2, 128),
  (3, 192),
  (4, 256),
  (5, 320),
  (6, 384),
  (7, 448),
  (8, 512),
  (10, 640),
  (12, 768),
  (14, 896),
  (16, 1024),
  (20, 1024),
  (24, 1024),
  (24, 1280),
  (24, 1536),
]


def flops_per_token(s: common.Shape) -> float:
  return common.flops_per_token(s, seq_len=ladder.SEQ_LEN)


def sizes_for(budget: float) -> list[common.Shape]:
  """The SIZES_PER_BUDGET candidates nearest Chinchilla's optimum that get >= MIN_STEPS."""
  n_opt = math.sqrt(budget / 120)
  tokens_per_step = ladder.BATCH[ACCEL] * ladder.SEQ_LEN
  shapes = [ladder.shape(*c) for c in CANDIDATES]
  ok = [s for s in shapes if budget / flops_per_token(s) / tokens_per_step >= MIN_STEPS]
  near = sorted(ok, key=lambda s: abs(math.log(s.nonembed() / n_opt)))[:SIZES_PER_BUDGET]
  return sorted(near, key=lambda s: s.nonembed())


def get_sweep() -> list[tuple[str, dict]]:
  runs = []
  for budget in BUDGETS[ACCEL]:
    tag = common.budget_name(budget)
    for s in sizes_for(budget):
      o = ladder.run(
        s,
        budget / flops_per_token(s),
        common.width_lr(s.d_model),
        ladder.BATCH[ACCEL],
        'accel_isoflop',
        group=f'C{tag}',
        budget_flops=float(budget),
      )
      runs.append((f'C{tag}-{s.name}', o))
  return runs
