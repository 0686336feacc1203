"""IsoFLOP profiles (Hoffmann et al. 2022, approach 2): five model sizes per compute budget.

For each budget C in BUDGETS, the five sizes of CANDIDATES nearest (in log N) to the
compute-optimal size of Chinchilla's 20 tokens per parameter, N ~ sqrt(C / 120), each trained
for the number of steps that spends C: steps = C / (flops_per_token * batch * seq_len), with
flops_per_token by PaLM's formula (models/accounting.py; common.flops_per_token is the same
closed form). Each run carries tags.budget_flops = C; analysis fits a parabola in log N to
each budget's final losses and reads off its minimum. About 1.2 hours on a 2-core CPU with
--parallel=2.
"""

import math

from experiments.sweeps import common

BASE_CONFIG = common.BASE_CONFIG
BUDGETS = (3e12, 1e13, 3e13)  # training FLOPs per run
SIZES_PER_BUDGET = 5
MIN_STEPS = 50  # fewer and rounding the steps would miss the budget by > 1%
CANDIDATES = (
  common.Shape(2, 48, 3),
  common.Shape(2, 64, 4),
  common.Shape(2, 80, 5),
  common.Shape(2, 96, 6),
  common.Shape(3, 128, 4),
  common.Shape(3, 160, 5),
  common.Shape(3, 192, 6),
  common.Shape(4, 256, 8),
  common.Shape(5, 320, 10),
)


def sizes_for(budget: float) -> list[common.Shape]:
  """The SIZES_PER_BUDGET candidates nearest the 20-tokens-per-parameter size, small first."""
  n_opt = math.sqrt(budget / 120)
  fits = [
    s for s in CANDIDATES if common.steps_for(budget / common.flops_per_token(s)) >= MIN_STEPS
  ]
  near = sorted(fits, key=lambda s: abs(math.log(s.nonembed() / n_opt)))[:SIZES_PER_BUDGET]
  return sorted(near, key=lambda s: s.nonembed())


def get_sweep() -> list[tuple[str, dict]]:
  runs = []
  for budget in BUDGETS:
    tag = common.budget_name(budget)
    for s in sizes_for(budget):
      tokens = budget / common.flops_per_token(s)
      run = common.ladder_run(s, tokens, 'isoflop', f'C{tag}', budget_flops=float(budget))
      runs.append((f'C{tag}-{s.name}', run))
  return runs
