"""L(N) over a longer GPT-3-shaped ladder than the demo, each model on the same TOKENS tokens.

Eight sizes, 5.7e4 to 1.0e7 non-embedding parameters (2.25 decades), width/depth 24 to 80 and
heads of 16 to 32 dimensions, the measured lr rule (common.width_lr). At 2M tokens per run the
largest model is still improving when the smaller ones have flattened, so this ladder shows
where L(N) at fixed D bends away from a pure power law (Kaplan et al. eq. 1.5). About 2 hours
on a 2-core CPU with --parallel=2; minutes on one accelerator.
"""

from experiments.sweeps import common

BASE_CONFIG = common.BASE_CONFIG
TOKENS = 2_000_000  # per run

LADDER = [
  common.Shape(6, 384, 12),  # 10.6M non-embedding parameters
  common.Shape(5, 320, 10),  # 6.2M
  common.Shape(4, 256, 8),  # 3.2M
  common.Shape(3, 192, 6),  # 1.3M
  common.Shape(3, 128, 4),  # 594k
  common.Shape(2, 96, 6),  # 224k
  common.Shape(2, 64, 4),  # 100k
  common.Shape(2, 48, 3),  # 57k
]


def get_sweep() -> list[tuple[str, dict]]:
  return [
    (s.name, common.ladder_run(s, TOKENS, sweep='size_ladder', group='ladder')) for s in LADDER
  ]
