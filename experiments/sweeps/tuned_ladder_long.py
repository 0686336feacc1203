"""The tuned ladder at the demo's tokens: three rates around each size's measured optimum.

tuned_ladder.py measured each size's optimum on 600k tokens, where the narrow models are still
near the bigram plateau. This sweep trains the same five sizes on the demo's 1.2M tokens (its
batch, warmup and schedule), at three rates sqrt(2) apart (the same grid points) centred on
CENTRE, each at two seeds: the grid point nearest the 600k-token optimum, except at width 160,
one step lower (the demo measured 4.8e-3 worse than 3.3e-3 there on these tokens: optimal
rates fall with run length). A size whose best rate is at an end of its three leaves the fit
(docs/MUP.md; launch.compare says which).

  python -m launch.sweep --sweep=experiments/sweeps/tuned_ladder_long.py \
      --workdir=runs/tuned_long --parallel=1
"""

from experiments.sweeps import common, demo, tuned_ladder

BASE_CONFIG = common.BASE_CONFIG
TOKENS = demo.TOKENS
SIZES = tuned_ladder.SIZES
# index into tuned_ladder.lrs_for(size) of the middle rate
CENTRE = {160: 2, 96: 2, 64: 3, 48: 4, 32: 4}
SEEDS = tuned_ladder.SEEDS


def get_sweep() -> list[tuple[str, dict]]:
  runs = []
  for s in SIZES:
    grid = tuned_ladder.lrs_for(s)
    i = CENTRE[s.d_model]

    def make(lr, s=s):
      return demo.run_overrides(s, TOKENS, lr, sweep='tuned_ladder_long', group='tuned_long')

    runs += common.grid_runs(s.name, make, grid[i - 1 : i + 2], SEEDS)
  return runs
