"""A per-size tuned L(N) ladder with seeds: every size at an lr grid, every point at SEEDS.

Four of the demo's sizes (demo.py: 25k to 619k non-embedding parameters, 2 layers), each at
five peak learning rates sqrt(2) apart centred on the measured rule (common.width_lr), each
rate at two seeds (the seed changes the initialisation and the data order), on TOKENS tokens
with the demo's batch, warmup and schedule: 40 runs, tagged tags.size / tags.lr / tags.seed
so the analysis can take each size's optimum from a parabola in log lr (it must lie inside
the grid) and the loss per size as the mean over seeds. Estimated ~45 min at --parallel=1 on
a quiet 2-core machine (the demo's per-run times scaled to these tokens); not measured.

  python -m launch.sweep --sweep=experiments/sweeps/tuned_ladder.py --workdir=runs/tuned \
      --parallel=2
"""

from experiments.sweeps import common, demo

BASE_CONFIG = common.BASE_CONFIG
TOKENS = 600_000  # half the demo's, as lr_sweep.py: the tuning must cost less than the job
SIZES = demo.LADDER[1:3] + demo.LADDER[-2:]  # L2-d160, L2-d96, L2-d48, L2-d32
POINTS = 5
SEEDS = (0, 1)


def get_sweep() -> list[tuple[str, dict]]:
  runs = []
  for s in SIZES:

    def make(lr, s=s):
      return demo.run_overrides(s, TOKENS, lr, sweep='tuned_ladder', group='tuned')

    runs += common.grid_runs(
      s.name, make, common.lr_grid(common.width_lr(s.d_model), POINTS), SEEDS
    )
  return runs
