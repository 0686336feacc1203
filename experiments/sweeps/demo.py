"""The README's main job: an L(N) ladder of GPT-3-shaped models that runs on a 2-core CPU.

Six sizes from 5.7e4 to 3.2e6 non-embedding parameters (1.75 decades), each trained on the
same TOKENS tokens of byte-level Shakespeare at Kaplan et al.'s lr(N) (common.py), so the
fitted L(N) = (N_c / N)^alpha_N is a toy, fixed-D version of the paper's Figure 1 (right).
Shapes follow GPT-3: width/depth 24 to 64 (GPT-3: 43 to 128; below it only at the bottom)
and heads of 16 or 32 dimensions.

Budget (measured, docs/SWEEPS.md): with --parallel=2 the largest model runs on one core
while the five others run one after another on the other; the runs are listed largest
first so that this greedy order balances the two cores.

  python -m launch.sweep --sweep=experiments/sweeps/demo.py --workdir=runs/demo --parallel=2
"""

from experiments.sweeps import common

BASE_CONFIG = common.BASE_CONFIG
TOKENS = 600_000  # per run

LADDER = [
  common.Shape(4, 256, 8),  # 3.16M non-embedding parameters, d/L 64, heads of 32
  common.Shape(3, 192, 6),  # 1.33M, 64, 32
  common.Shape(3, 128, 4),  # 595k, 43, 32
  common.Shape(2, 96, 6),  # 224k, 48, 16
  common.Shape(2, 64, 4),  # 100k, 32, 16
  common.Shape(2, 48, 3),  # 57k, 24, 16
]


def get_sweep() -> list[tuple[str, dict]]:
  return [(s.name, common.ladder_run(s, TOKENS, sweep='demo', group='demo')) for s in LADDER]
