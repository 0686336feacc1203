"""The demo's ladder in muP: one base learning rate for every width, with seeds (docs/MUP.md).

The six demo sizes (demo.py) in the maximal update parametrization (models/mup.py), base width
BASE_WIDTH, every size at the same peak lr BASE_LR (muP scales each hidden matrix's rate by
BASE_WIDTH / d_model itself), SEEDS seeds each, the demo's tokens, batch, warmup, schedule and
log-spaced evaluations: 18 runs, tagged tags.size / tags.lr / tags.seed. BASE_LR comes from
the transfer measurement (mup_transfer.py, docs/MUP.md), made on 307k-token runs: it may be
high for these 1.2M-token ones. Estimated ~25 min at
--parallel=2 on a quiet 2-core machine (three demos); not measured.

  python -m launch.sweep --sweep=experiments/sweeps/mup_ladder.py --workdir=runs/mup_ladder \
      --parallel=2
"""

from experiments.sweeps import common, demo

BASE_CONFIG = common.BASE_CONFIG
BASE_WIDTH = 128
BASE_LR = 5.66e-3  # docs/MUP.md: the grid point nearest the muP minima (5.4e-3 to 6.9e-3)
SEEDS = (0, 1, 2)


def get_sweep() -> list[tuple[str, dict]]:
  runs = []
  for s in demo.LADDER:

    def make(lr, s=s):
      o = demo.run_overrides(s, demo.TOKENS, lr, sweep='mup_ladder', group='mup')
      return {**o, **common.mup_overrides(BASE_WIDTH)}

    runs += common.grid_runs(s.name, make, [BASE_LR], SEEDS)
  return runs
