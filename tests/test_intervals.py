"""Intervals and the compute frontier against synthetic data whose truth is known.

An interval is checked for both of its promises: it covers the truth at its stated rate, and
it is as wide as the sampling spread says (an interval can cover 100% by being too wide).
Only the public functions of experiments/scaling.py are used (jackknife_ci,
compute_frontier, fit_compute_frontier).
"""

import math
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import special, stats

from experiments import scaling


def c4(n: int) -> float:
  """E[sample standard deviation] / sigma for n normal draws."""
  return math.sqrt(2 / (n - 1)) * math.exp(special.gammaln(n / 2) - special.gammaln((n - 1) / 2))


def test_jackknife_interval_of_a_mean_covers_at_its_rate_with_the_t_width():
  """For the mean, the leave-one-out jackknife is the exact Student-t interval: over 1000
  samples of 8 normal draws it covers the true mean 95% of the time (binomial sd 0.7%), and
  its mean width is 2 t(0.975, 7) sigma c4(8) / sqrt(8) (sd of that mean 0.8%)."""
  rng = np.random.default_rng(0)
  mu, sigma, n, reps = 3.0, 0.5, 8, 1000
  covered, widths = 0, []
  for _ in range(reps):
    runs = list(rng.normal(mu, sigma, n))
    lo, hi = scaling.jackknife_ci(runs, lambda rs: float(np.mean(rs)))
    covered += lo <= mu <= hi
    widths.append(hi - lo)
  assert 0.93 <= covered / reps <= 0.97, covered / reps
  want = 2 * stats.t.ppf(0.975, n - 1) * sigma * c4(n) / math.sqrt(n)
  assert np.mean(widths) == pytest.approx(want, rel=0.03)
  # The level is honoured: a 68% interval is narrower by the ratio of the t quantiles.
  runs = list(rng.normal(mu, sigma, n))
  lo95, hi95 = scaling.jackknife_ci(runs, lambda rs: float(np.mean(rs)))
  lo68, hi68 = scaling.jackknife_ci(runs, lambda rs: float(np.mean(rs)), level=0.68)
  ratio = stats.t.ppf(0.84, n - 1) / stats.t.ppf(0.975, n - 1)
  assert (hi68 - lo68) / (hi95 - lo95) == pytest.approx(ratio, rel=1e-9)


def test_jackknife_needs_three_leave_outs_that_work():
  def fails_without_the_first(rs):
    if rs[0] != 0.0:
      raise ValueError('no fit')
    return float(np.mean(rs))

  assert scaling.jackknife_ci([0.0, 1.0, 2.0, 3.0], fails_without_the_first) is not None
  assert scaling.jackknife_ci([0.0, 1.0, 2.0], fails_without_the_first) is None  # 2 worked


# L(C) = E + A C^-a, the law every run's best points lie on.
E_TRUE, ALPHA_TRUE = 1.7, 0.3
A_TRUE = 2.3 * 1e12**ALPHA_TRUE  # L(1e12) = 4.0


def law(c):
  return E_TRUE + A_TRUE * np.power(c, -ALPHA_TRUE)


def frontier_runs():
  """Four runs over 4 decades of compute. Each reaches the law at its own compute values (every
  other point of a 20-point grid) and lies above it elsewhere: before its range it is worse,
  and after it a small model saturates (a flat curve). The envelope is the 12 law points; the
  others never improve on the best loss at a smaller compute and must be left out."""
  grid = np.geomspace(1e12, 1e16, 20)
  runs, own_all = [], []
  for j in range(4):
    own = grid[5 * j : 5 * j + 5 : 2]  # 0 2 4, 5 7 9, 10 12 14, 15 17 19
    early = grid[max(0, 5 * j - 3) : 5 * j] * 1.0001
    late = grid[5 * j + 5 : 5 * j + 9] * 0.9999
    flops = np.concatenate([early, own, late])
    loss = np.concatenate([law(early) + 0.3, law(own), np.full(len(late), law(own[-1]))])
    order = np.argsort(flops)
    steps = np.arange(1, len(flops) + 1) * 100  # every point past warmup (none is set)
    curve = {'flops': flops[order], 'loss': loss[order], 'step': steps, 'sem': 0.01 + 0 * steps}
    runs.append(SimpleNamespace(curve={'eval': curve}, config={}))
    own_all.append(own)
  return runs, np.sort(np.concatenate(own_all))


def test_compute_frontier_fit_recovers_the_law():
  runs, own = frontier_runs()
  c, loss, _ = scaling.compute_frontier(runs)
  np.testing.assert_allclose(c, own, rtol=1e-12)  # each loss at the C where it was reached
  np.testing.assert_allclose(loss, law(own), rtol=1e-12)
  fit = scaling.fit_compute_frontier(runs)
  assert fit.alpha == pytest.approx(ALPHA_TRUE, rel=1e-3)
  assert fit.E == pytest.approx(E_TRUE, rel=1e-3)
  assert fit.A == pytest.approx(A_TRUE, rel=1e-2)
  assert fit.n == 12  # the points where the envelope improves: the runs' own law points
  grid = np.geomspace(1e12, 1e16, 20)
  np.testing.assert_allclose(fit.predict(grid), law(grid), rtol=1e-4)
