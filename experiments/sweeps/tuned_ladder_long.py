"""The tuned ladder at the demo's tokens: a few rates around each size's measured optimum.

tuned_ladder.py measured each size's optimum on 600k tokens, where the narrow models are still
near the bigram plateau. This sweep trains the same five sizes on the demo's 1.2M tokens (its
batch, warmup and schedule), each at two seeds, at rates sqrt(2) apart: width_lr * sqrt(2)^k
for k in RATES[width] (tuned_ladder's grid points). First three centred on the grid point
nearest the 600k-token optimum (one step lower at width 160, where the demo had measured 4.8e-3
worse than 3.3e-3 in one seed); then, at each size whose best rate was at an end of its grid,
one more beyond it, until the best was inside (width 160 twice, 96 and 64 once). A size whose
best rate is at an end of its grid leaves the fit (docs/MUP.md; launch.compare says which).

  python -m launch.sweep --sweep=experiments/sweeps/tuned_ladder_long.py \
      --workdir=runs/tuned_long --parallel=1
"""

from experiments.sweeps import common, demo, tuned_ladder

BASE_CONFIG = common.BASE_CONFIG
TOKENS = demo.TOKENS
SIZES = tuned_ladder.SIZES
RATES = {160: (-1, 3), 96: (-1, 2), 64: (0, 3), 48: (1, 3), 32: (1, 3)}  # (first, last) k
SPAN = 4  # the grid a size's rates are taken from: k = -SPAN..SPAN
SEEDS = tuned_ladder.SEEDS


def get_sweep() -> list[tuple[str, dict]]:
  runs = []
  for s in SIZES:
    first, last = RATES[s.d_model]

    def make(lr, s=s):
      return demo.run_overrides(s, TOKENS, lr, sweep='tuned_ladder_long', group='tuned_long')

    grid = common.lr_grid(common.width_lr(s.d_model), 2 * SPAN + 1)
    runs += common.grid_runs(s.name, make, grid[SPAN + first : SPAN + last + 1], SEEDS)
  return runs
