"""launch.compare over sweeps with bad runs: each is named in one line and skipped, the rest fitted.

Also: the one bootstrap (experiments/scaling.py) honours --bootstrap, for the printed intervals
and the drawn band alike.
"""

import json
import os

import numpy as np
import pytest

from experiments import scaling
from launch import compare


def write_run(root, name, n, loss, tokens=1e8, tags=None, sem=0.01):
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
    'final_eval_loss_sem': sem,
    'config': {'tags': tags or {}, 'train': {'lr': 1e-3, 'warmup_steps': 0}},
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


SIZES = np.geomspace(1e5, 1e7, 6)
LRS = 1e-3 * 2.0 ** np.arange(-2, 3)  # five rates, a factor 2 apart


def tuned_loss(n, lr, alpha, lr_opt):
  """A size law times a bowl in log lr around lr_opt."""
  return 1.0 + 20 * n**-alpha + 0.05 * np.log(lr / lr_opt) ** 2


def test_groups_lr_grids_and_seeds(tmp_path):
  """Two groups in one directory, each a 6-size ladder x 5 lrs x 3 seeds: alpha per group side
  by side; each size's optimum from its parabola in log lr; the mean over seeds, not the best;
  a size whose optimum sits at the grid's edge is left out and named."""
  root = str(tmp_path / 'tuned')
  rng = np.random.default_rng(0)
  for group, alpha in (('mup', 0.3), ('tuned', 0.2)):
    for i, n in enumerate(SIZES):
      lr_opt = 1e-3 * (0.8 if i else 8.0)  # the smallest size wants a rate past the grid
      for lr in LRS:
        for seed in range(3):
          loss = tuned_loss(n, lr, alpha, lr_opt) + rng.normal(0, 0.004)
          tags = {'group': group, 'size': f's{i}', 'lr': lr, 'seed': seed}
          write_run(root, f'{group}-s{i}-lr{lr:.2g}-{seed}', n, loss, tags=tags, sem=0.003)
  results = scaling.analyze([root], n_boot=100)
  assert [r['label'] for r in results] == ['tuned/mup', 'tuned/tuned']
  for r, alpha in zip(results, (0.3, 0.2), strict=True):
    pts = r['points']
    assert len(pts['n']) == 5 and SIZES[0] not in pts['n']  # the edge size is left out ...
    assert any('size s0: optimum lr not inside the grid' in note for note in pts['notes'])
    np.testing.assert_allclose(pts['lr_opt'], 0.8e-3, rtol=0.15)
    # ... and the others sit at their parabola's minimum of the seed means
    np.testing.assert_allclose(pts['loss'], 1.0 + 20 * pts['n'] ** -alpha, atol=0.006)
    assert pts['seed_dof'] == 6 * 5 * 2 and pts['seed_sd'] == pytest.approx(0.004, rel=0.25)
    lo, hi = r['ci']['alpha']
    assert lo < alpha < hi
    assert r['law'].chi2_dof is not None and r['law'].chi2_dof < 5
  text = scaling.fits_table(results)
  assert 'chi2/dof of L(N) against the seed variance' in text
  assert 'optimum lr not inside the grid' in text


def plateau_dip_cliff(lr, lr_opt):
  """A measured shape: flat far below the optimum (the bigram plateau), a cliff above it."""
  u = np.log(lr / lr_opt)
  return 2.1 - 0.1 * np.exp(-(u**2) / (2 * 0.4**2)) + 0.3 * np.maximum(u, 0) ** 2


def test_lr_optimum_from_the_rates_around_the_best_of_a_wide_grid(tmp_path):
  """A 7-rate grid over a curve that is no parabola far from its optimum (a plateau below, a
  cliff above): the parabola through the 5 rates around the best finds the optimum within half
  a grid step and its loss; one through all 7 would put it 1.6x too low and 0.024 too high."""
  root = str(tmp_path / 'wide')
  lrs = 1e-2 * np.sqrt(2.0) ** np.arange(-4, 3)  # the optimum, 1e-2, is the 5th rate
  for i, n in enumerate(SIZES):
    for lr in lrs:
      loss = plateau_dip_cliff(lr, 1e-2) + (20 * n**-0.3 - 0.2)
      write_run(root, f's{i}-lr{lr:.3g}', n, loss, tags={'size': f's{i}', 'lr': float(lr)})
  (r,) = scaling.analyze([root], n_boot=0)
  pts = r['points']
  assert len(pts['n']) == len(SIZES) and not pts['notes']
  np.testing.assert_allclose(pts['lr_opt'], 1e-2, rtol=2**0.25 - 1)
  np.testing.assert_allclose(pts['loss'], 1.8 + 20 * SIZES**-0.3, atol=0.003)


def test_mean_over_seeds_not_the_minimum(tmp_path):
  root = str(tmp_path / 'seeds')
  for i, n in enumerate(SIZES):
    for seed, off in enumerate((-0.02, 0.0, 0.02, 0.04)):
      tags = {'size': f's{i}', 'seed': seed}
      write_run(root, f's{i}-{seed}', n, 1.0 + 20 * n**-0.3 + off, tags=tags)
  (r,) = scaling.analyze([root], n_boot=0)
  np.testing.assert_allclose(r['points']['loss'], 1.01 + 20 * SIZES**-0.3)


def test_untagged_runs_and_tagged_seeds_of_one_shape_are_one_size(tmp_path):
  """A ladder trained once without tags (seed 0, the demo) merged with its reruns at seed 1
  (tags.size, tags.seed): each shape is one size, its point the mean of both seeds."""
  first, again = str(tmp_path / 'demo'), str(tmp_path / 'seeds')
  for i, n in enumerate(SIZES):
    # untagged: the config's defaults, tags.size '' and tags.lr 0.0; train.lr is the rate
    write_run(first, f's{i}', n, 1.0 + 20 * n**-0.3 - 0.01, tags={'size': '', 'lr': 0.0})
    tags = {'size': f's{i}', 'seed': 1, 'lr': 1e-3}
    write_run(again, f's{i}-s1', n, 1.0 + 20 * n**-0.3 + 0.01, tags=tags)
  (r,) = scaling.analyze([first, again], n_boot=0, merge=True)
  assert len(r['points']['n']) == len(SIZES) and r['points']['seed_dof'] == len(SIZES)
  np.testing.assert_allclose(r['points']['loss'], 1.0 + 20 * SIZES**-0.3)


def test_narrow_spans_are_refused_and_directories_merge(tmp_path):
  for d, sizes in (('narrow_a', SIZES[:3]), ('narrow_b', SIZES[3:])):
    for k, n in enumerate(sizes):
      write_run(str(tmp_path / d), f'r{k}', n, 1.0 + 20 * n**-0.3)
  dirs = [str(tmp_path / 'narrow_a'), str(tmp_path / 'narrow_b')]
  apart = scaling.analyze(dirs, n_boot=20)
  for r in apart:  # each alone: 3 sizes over 0.8 decades, a fit (without an interval)
    assert 'fit' in r and r['ci'] == {} and 'degrees of freedom' in r['law'].note
  (merged,) = scaling.analyze(dirs, n_boot=50, merge=True)
  assert merged['label'] == 'narrow_a+narrow_b' and len(merged['runs']) == 6
  assert abs(merged['fit'].alpha - 0.3) < 0.01
  assert {r.name for r in merged['runs']} >= {'narrow_a/r0', 'narrow_b/r0'}
  close = str(tmp_path / 'aspect')
  for k, n in enumerate(np.linspace(8.0e5, 8.2e5, 4)):  # the aspect sweep: N within 2.5%
    write_run(close, f'r{k}', n, 2.0 + 0.01 * k)
  (r,) = scaling.analyze([close], n_boot=20)
  assert 'fit' not in r and 'extrapolation' not in r
  assert 'N spans 0.01 decades' in r['law_note'] and 'no exponent is fitted' in r['law_note']
  assert 'L(N): refused: N spans' in scaling.fits_table([r])


def test_log_axes_read_as_numbers():
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots()
  ax.plot([1e4, 1e6], [1.8, 2.4], label='x')
  compare._log_axes(ax, 'N', 'loss')
  fig.canvas.draw()
  labels = [t.get_text() for t in ax.get_yticklabels(minor=True) + ax.get_yticklabels()]
  labels = [t for t in labels if t]
  assert labels and all('times' not in t and '^' not in t for t in labels), labels
  assert {'2', '2.2'} <= set(labels)
  plt.close(fig)
