"""The science of the main job: reference levels, fits with intervals, N_opt from curves, spec.

Oracles: the entropy rate of a known Markov chain (corpus levels); a known law plus noise
(intervals cover it, and shrink with the noise); curves drawn from a Chinchilla law, whose
N_opt ~ C^(beta / (alpha + beta)) is known in closed form.
"""

import csv
import dataclasses
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from data import levels
from experiments import scaling, sweep_spec
from experiments.sweeps import common, demo, lr_sweep
from launch.shell import TRAIN_CMD
from tests.cluster import REPO
from train.loop import log_spaced_steps


def test_levels_recover_a_markov_chains_entropies():
  rng = np.random.default_rng(0)
  k = 4  # bytes 'a'..'d', a random transition matrix
  trans = rng.dirichlet(np.ones(k) * 0.7, size=k)
  seq = np.zeros(200_000, int)
  u = rng.random(len(seq))
  cum = np.cumsum(trans, axis=1)
  for i in range(1, len(seq)):
    seq[i] = min(np.searchsorted(cum[seq[i - 1]], u[i]), k - 1)
  text = (ord('a') + seq).astype(np.uint8).tobytes()
  evals, vecs = np.linalg.eig(trans.T)
  pi = np.real(vecs[:, np.argmax(np.real(evals))])
  pi /= pi.sum()
  rate = -np.sum(pi[:, None] * trans * np.log(trans))
  h1 = -np.sum(pi * np.log(pi))
  lv = levels.cross_entropy([text[:150_000]], [text[150_000:]])
  assert lv['bigram'] == pytest.approx(rate, abs=0.01)
  assert lv['unigram'] == pytest.approx(h1, abs=0.01)
  assert lv['bytes'] == 50_000


def test_power_law_intervals_cover_the_truth_and_shrink_with_noise():
  n = np.geomspace(2.5e4, 1.3e6, 6)
  true = {'E': 1.3, 'A': 40.0, 'alpha': 0.3}
  clean = true['E'] + true['A'] * n ** -true['alpha']
  rng = np.random.default_rng(3)
  widths = []
  for noise in (0.01, 0.002):
    loss = clean * np.exp(rng.normal(0, noise, n.size))
    fit = scaling.fit_power_law_ci(n, loss, sem=loss * noise, n=300)
    for k, v in true.items():
      lo, hi = fit.ci[k]
      assert lo <= v <= hi, (noise, k, lo, v, hi)
    assert fit.law.E > 0
    widths.append(fit.relative_halfwidth('alpha'))
  assert widths[1] < widths[0] / 2


def _chinchilla_runs(alpha=0.34, beta=0.28):
  law = scaling.Chinchilla(E=1.0, A=400.0, B=400.0, alpha=alpha, beta=beta)
  runs = []
  for n in np.geomspace(1e5, 1e8, 13):
    tokens = np.geomspace(1e6, 1e11, 40)
    flops = 6 * n * tokens
    curve = {'eval': {'flops': flops, 'loss': law.predict(n, tokens), 'tokens': tokens}}
    runs.append(
      scaling.Run(
        name=f'{n:.0f}',
        n_params=int(n),
        n_nonembed=int(n),
        flops_per_token=6 * n,
        tokens=int(tokens[-1]),
        final_eval_loss=float(curve['eval']['loss'][-1]),
        final_eval_loss_sem=0.0,
        tags={},
        config={},
        wall_time_s=None,
        curve=curve,
      )
    )
  return runs, beta / (alpha + beta)


def test_nopt_from_curves_recovers_the_chinchilla_exponent():
  runs, a = _chinchilla_runs()
  iso = scaling.isoflop_from_curves(runs, budgets=6)
  assert iso.exponent == pytest.approx(a, abs=0.03)
  lo, hi = scaling.jackknife_ci(runs, lambda rs: scaling.isoflop_from_curves(rs).exponent)
  assert lo <= iso.exponent <= hi
  runs, a = _chinchilla_runs(alpha=0.45, beta=0.25)  # another exponent, not a constant answer
  assert scaling.isoflop_from_curves(runs, budgets=6).exponent == pytest.approx(a, abs=0.03)


def test_csv_has_every_run_and_every_fitted_parameter(tmp_path):
  runs, _ = _chinchilla_runs()
  runs[0] = dataclasses.replace(runs[0], wall_time_s=12.5)
  rows = scaling.run_rows('demo', runs)
  scaling.write_csv(tmp_path / 'runs.csv', scaling.RUN_COLUMNS, rows)
  fit = scaling.fit_power_law_ci([1e4, 1e5, 1e6, 1e7, 1e8], [3.0, 2.5, 2.2, 2.05, 1.97], n=50)
  fits = scaling.fit_rows('demo', 'L(N)', fit.law.params(), fit.ci, fit.law.r2, 5)
  scaling.write_csv(tmp_path / 'fits.csv', scaling.FIT_COLUMNS, fits)
  got = list(csv.DictReader(open(tmp_path / 'runs.csv')))
  assert [int(r['n_nonembed']) for r in got] == sorted(r.n_nonembed for r in runs)
  assert float(got[0]['compute_flops']) == pytest.approx(runs[0].flops_per_token * runs[0].tokens)
  assert got[0]['wall_time_s'] == '12.5' and got[1]['wall_time_s'] == ''
  got = list(csv.DictReader(open(tmp_path / 'fits.csv')))
  assert {r['parameter'] for r in got} == {'E', 'A', 'alpha'}
  for r in got:
    assert float(r['ci95_lo']) <= float(r['value']) <= float(r['ci95_hi'])


def test_demo_runs_are_curves_over_the_same_tokens_at_the_swept_lr():
  runs = demo.get_sweep()
  n = [common.nonembed_params(s) for s in demo.LADDER]
  assert math.log10(max(n) / min(n)) >= 1.5 and n == sorted(n, reverse=True)
  assert len({o['tags.tokens'] for _, o in runs}) == 1
  for _, o in runs:
    evals = log_spaced_steps(o['train.steps'], o['eval.log_points'])
    assert len(evals) >= 10
    gaps = np.diff(np.log(sorted(evals)))
    assert gaps.max() < 3 * gaps.min() + 0.1  # log-spaced, not bunched at the end
  lrs = [o['train.lr'] for _, o in runs]
  assert lrs == sorted(lrs)  # wider models take smaller steps
  # The sweep that chose the rule brackets every lr the demo uses.
  assert min(lr_sweep.LRS) <= min(lrs) and max(lrs) <= max(lr_sweep.LRS)


# -- The accelerator recipe: dry runs on CPU, and a two-step run of its config on tiny data ---

ACCEL_SWEEPS = ('accel_ladder', 'accel_isoflop')


def _accel_runs(stem, accel, monkeypatch):
  monkeypatch.setenv('ACCEL', accel)
  return sweep_spec.expand(os.path.join(REPO, 'experiments', 'sweeps', f'{stem}.py')).runs


@pytest.mark.parametrize('accel', ['gpu', 'v5p'])
def test_accel_sweeps_dry_run_and_spend_chinchilla_budgets(accel, monkeypatch):
  ladder = _accel_runs('accel_ladder', accel, monkeypatch)
  n = [common.nonembed_params(_shape(r.overrides)) for r in ladder]
  assert math.log10(max(n) / min(n)) >= 1.3
  for r, size in zip(ladder, n, strict=True):
    assert r.overrides['data.name'] == 'lm1b' and r.overrides['model.dtype'] == 'bfloat16'
    assert r.overrides['tags.tokens'] == pytest.approx(20 * size, rel=0.02)  # Chinchilla
  by_budget = {}
  for r in _accel_runs('accel_isoflop', accel, monkeypatch):
    o = r.overrides
    s = _shape(o)
    spent = common.flops_per_token(s, seq_len=o['data.seq_len']) * o['tags.tokens']
    assert spent == pytest.approx(o['tags.budget_flops'], rel=0.03), r.name
    by_budget.setdefault(o['tags.budget_flops'], []).append(s.nonembed())
  assert len(by_budget) == 3
  for c, sizes in by_budget.items():
    assert len(sizes) == 5 and min(sizes) < math.sqrt(c / 120) < max(sizes)  # around N_opt
  r = subprocess.run(
    [
      sys.executable,
      '-m',
      'launch.sweep',
      '--dry_run',
      '--workdir=/tmp/unused',
      '--sweep=experiments/sweeps/accel_isoflop.py',
    ],
    cwd=REPO,
    env={**os.environ, 'ACCEL': accel},
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert r.returncode == 0 and '15 runs (dry run' in r.stdout, r.stderr[-500:]


def _shape(o: dict) -> common.Shape:
  return common.Shape(
    o['model.num_layers'],
    o['model.d_model'],
    o['model.num_heads'],
    o['model.head_dim'],
    o['model.d_ff'],
  )


def test_accel_run_takes_two_steps_on_a_tiny_prepared_lm1b(tmp_path, monkeypatch):
  """The smallest GPU-ladder run, its config unchanged but for steps, batch and data_dir, on a
  dataset with lm1b's real name and splits (train and test only)."""
  from tests import fake_lm1b

  data_dir = tmp_path / 'tfds'
  fake_lm1b.build(str(data_dir))
  run = min(
    _accel_runs('accel_ladder', 'gpu', monkeypatch), key=lambda r: r.overrides['model.d_model']
  )
  run = sweep_spec.Run(
    run.name,
    run.config,
    {
      **run.overrides,
      'train.steps': 2,
      'train.warmup_steps': 1,
      'train.global_batch': 8,
      'eval.batch_size': 8,
      'eval.batches': 1,
      'data.data_dir': str(data_dir),
    },
  )
  workdir = tmp_path / 'run'
  r = subprocess.run(
    run.argv(str(workdir), TRAIN_CMD), cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert r.returncode == 0, r.stderr[-2000:]
  summary = json.loads((workdir / 'summary.json').read_text())
  assert summary['final_step'] == 2 and math.isfinite(summary['final_eval_loss'])
  assert summary['config']['data']['name'] == 'lm1b'
  assert summary['config']['model']['dtype'] == 'bfloat16'
