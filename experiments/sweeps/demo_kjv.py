"""The main job on a second corpus: the demo's ladder, lr rule and tokens on the King James Bible.

A robustness check of the demo's law: same six sizes, same tokens per run, same learning
rates, on a different public-domain English text (data/kjv.py: 66 books, 4.1 MB,
~10% of the books held out). Its reference levels (python -m data.levels --name=text_folder
--text_glob=...): unigram 3.03, bigram 2.27 nats/byte on the held-out books.

  python -m data.kjv --out=~/.cache/scaling_lm/kjv          # once: writes the books as .txt
  python -m launch.sweep --sweep=experiments/sweeps/demo_kjv.py --workdir=runs/demo_kjv \
      --parallel=2
(or: bash run.sh demo-kjv)
"""

from experiments.sweeps import common, demo

BASE_CONFIG = common.BASE_CONFIG
TEXT_GLOB = '~/.cache/scaling_lm/kjv/*.txt'


def get_sweep() -> list[tuple[str, dict]]:
  runs = []
  for s in demo.LADDER:
    o = demo.run_overrides(s, demo.TOKENS, demo.lr_for(s), sweep='demo_kjv', group='kjv')
    o.update({'data.name': 'text_folder', 'data.text_glob': TEXT_GLOB})
    runs.append((s.name, o))
  return runs
