"""Depth against width at fixed non-embedding parameters (Kaplan et al. 2020, Fig. 5 middle).

N = 793k (the L=4, d=128 model) at 1 to 16 layers: width/depth from 256 down to 4. The width
of each depth is the even d_model whose N is nearest the target within 2% (common.shape_at),
heads of about 32 dimensions. Kaplan et al. found the loss changes by only a few percent over a
wide range of shapes at fixed N. About 35 minutes on a 2-core CPU with --parallel=2.
"""

from experiments.sweeps import common

BASE_CONFIG = common.BASE_CONFIG
TOKENS = 1_000_000  # per run
TARGET_NONEMBED = common.Shape(4, 128, 4).nonembed()
DEPTHS = (1, 2, 3, 4, 6, 8, 12, 16)


def get_sweep() -> list[tuple[str, dict]]:
  runs = []
  for layers in DEPTHS:
    s = common.shape_at(TARGET_NONEMBED, layers)
    group = f'aspect{s.aspect:.0f}'
    runs.append(
      (s.name, common.ladder_run(s, TOKENS, 'aspect', group, target_nonembed=TARGET_NONEMBED))
    )
  return runs
