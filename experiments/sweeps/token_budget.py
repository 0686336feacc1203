"""L(D): three fixed models, each trained on 0.25M to 4M tokens (Kaplan et al. 2020, Sec. 4).

Each (model, tokens) pair is its own run with its own cosine schedule ending at its last
step: a checkpoint of a longer run, its cosine not yet decayed, would overestimate the loss
of a run of that length (Hoffmann et al. 2022). With the ladder sweeps this gives L(N, D) for
Kaplan et al.'s eq. 1.5.
About 2 hours on a 2-core CPU with --parallel=2.
"""

from experiments.sweeps import common

BASE_CONFIG = common.BASE_CONFIG
MODELS = (common.Shape(2, 64, 4), common.Shape(2, 128, 4), common.Shape(3, 192, 6))
TOKENS = (250_000, 500_000, 1_000_000, 2_000_000, 4_000_000)


def get_sweep() -> list[tuple[str, dict]]:
  runs = []
  for s in MODELS:
    for tokens in TOKENS:
      name = f'{s.name}-D{tokens / 1e6:g}M'
      runs.append((name, common.ladder_run(s, tokens, 'token_budget', s.name)))
  return runs
