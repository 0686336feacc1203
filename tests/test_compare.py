"""launch.compare over sweeps with bad runs: each is named in one line and skipped, the rest fitted.

Also: the one bootstrap (experiments/scaling.py) honours --bootstrap, for the printed intervals
and the drawn band alike.
"""

import json
import os

import numpy as np

from experiments import scaling
from launch import compare


def write_run(root, name, n, loss, tokens=1e8):
  run = os.path.join(root, 'runs', name)
  os.makedirs(run)
  with open(os.path.join(run, 'metrics.jsonl'), 'w') as f:
    for s in (1, 2):
      rec = {
        'kind': 'eval',
        'step': s,
        'eval_loss': loss + 1 / s,
        'tokens': tokens * s / 2,
        'flops': 6 * n * tokens * s / 2,
      }
      f.write(json.dumps(rec) + '\n')
  summary = {
    'n_params': int(n * 1.1),
    'n_params_nonembed': int(n),
    'flops_per_token': 6.0 * n,
    'tokens_seen': int(tokens),
    'final_eval_loss': loss,
    'final_eval_loss_sem': 0.01,
  }
  with open(os.path.join(run, 'summary.json'), 'w') as f:
    json.dump(summary, f)
  return run


def good_sweep(root, alpha=0.3):
  for k, n in enumerate(np.logspace(5, 7, 5)):
    write_run(root, f'r{k}', n, 1.0 + 20 * n**-alpha)


def test_bad_runs_are_named_and_skipped(tmp_path):
  root = str(tmp_path / 'sw')
  good_sweep(root)
  keyless = write_run(root, 'keyless', 3e6, 2.0)
  with open(os.path.join(keyless, 'summary.json'), 'w') as f:
    json.dump({'n_params': 10}, f)  # no n_params_nonembed, no losses
  corrupt = write_run(root, 'corrupt', 3e6, 2.0)
  with open(os.path.join(corrupt, 'metrics.jsonl'), 'a') as f:
    f.write('{"kind": "eval", "step": 3, "eval_lo\n')  # a write cut short
  warned, printed = [], []
  out = str(tmp_path / 'cmp.png')
  code = compare.compare([root], out, n_boot=20, echo=printed.append, warn=warned.append)
  assert code == 0
  assert len(warned) == 2 and all('\n' not in w for w in warned)
  assert any(
    os.path.join(keyless, 'summary.json') in w and 'n_params_nonembed' in w for w in warned
  )
  assert any(os.path.join(corrupt, 'metrics.jsonl') in w and 'line 3' in w for w in warned)
  fits = json.loads((tmp_path / 'cmp.json').read_text())['sw']
  assert sorted(r['name'] for r in fits['runs']) == [f'r{k}' for k in range(5)]
  assert abs(fits['power_law']['alpha'] - 0.3) < 0.01
  assert 'sw' in printed[0]


def test_bootstrap_count_is_honoured(tmp_path):
  root = str(tmp_path / 'sw')
  good_sweep(root)
  none = scaling.analyze_sweep(root, n_boot=0)
  assert none['ci'] == {} and scaling.band(none['boot_fits'], [1e6]) is None
  some = scaling.analyze_sweep(root, n_boot=20)
  assert 10 <= len(some['boot_fits']) <= 20
  lo, hi = some['ci']['alpha']
  assert lo <= 0.3 <= hi
  band = scaling.band(some['boot_fits'], np.array([1e5, 1e8]))
  assert (band[0] <= band[1]).all()
