"""A per-size tuned L(N) ladder with seeds: every size at an lr grid, every point at SEEDS.

The five 2-layer sizes of the demo (demo.py: 25k to 619k non-embedding parameters), each at
peak learning rates sqrt(2) apart centred on the demo's rule (common.width_lr), each rate at
two seeds (the seed changes the initialisation and the data order), on TOKENS tokens with the
demo's batch, warmup and schedule, tagged tags.size / tags.lr / tags.seed so the analysis takes
each size's optimum from a parabola in log lr (it must lie inside the grid) and the loss per
size as the mean over seeds. The grid is POINTS rates at the two widest sizes and POINTS + UP
at the narrow ones (width <= NARROW), extended upwards: the lr sweep (docs/SWEEPS.md) found the
57k model's optimum at or above 1.6e-2 at these tokens, 2.7x its width_lr, and the demo at
lr ~ 1/width gained up to 0.18 nats at the narrow end. The grid's centre is the demo's rate, so
the centre runs are also an SP 1/sqrt(width) ladder with seeds at the same tokens. Five sizes
because an interval on L(N) needs 3 parameters + 2 points; the 3-layer 1.33M model is left out
(it alone would cost as much as the rest). Measured: 44 min of wall time at --parallel=1 on
the shared 2-core machine; at these tokens the narrow models are still near the bigram plateau
and L(N) is no power law under either rule (docs/MUP.md).

  python -m launch.sweep --sweep=experiments/sweeps/tuned_ladder.py --workdir=runs/tuned \
      --parallel=1
"""

from experiments.sweeps import common, demo

BASE_CONFIG = common.BASE_CONFIG
TOKENS = 600_000  # half the demo's, as lr_sweep.py: the tuning must cost less than the job
SIZES = demo.LADDER[1:]  # L2-d160, L2-d96, L2-d64, L2-d48, L2-d32
POINTS = 5  # rates sqrt(2) apart centred on common.width_lr
UP = 2  # extra rates above the grid at widths <= NARROW
NARROW = 64
SEEDS = (0, 1)


def lrs_for(s: common.Shape) -> list[float]:
  """The size's grid: POINTS rates around width_lr, and UP more above it if it is narrow."""
  centre = common.width_lr(s.d_model)
  if s.d_model > NARROW:
    return common.lr_grid(centre, POINTS)
  return common.lr_grid(centre, POINTS + 2 * UP)[UP:]  # the same rates, and UP above


def get_sweep() -> list[tuple[str, dict]]:
  runs = []
  for s in SIZES:

    def make(lr, s=s):
      return demo.run_overrides(s, TOKENS, lr, sweep='tuned_ladder', group='tuned')

    runs += common.grid_runs(s.name, make, lrs_for(s), SEEDS)
  return runs
