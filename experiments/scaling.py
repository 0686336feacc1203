"""Scaling-law fits over the runs of a sweep (numpy/scipy only).

* `fit_power_law`: L(x) = E + A * x^-alpha (x = parameters or compute), least squares on log L.
* `fit_chinchilla`: L(N, D) = E + A / N^alpha + B / D^beta, fitted as Hoffmann et al. 2022 did:
  Huber loss (delta 1e-3) between log L and LSE(a - alpha log N, b - beta log D, e), with
  A = e^a, B = e^b, E = e^e, minimized by L-BFGS from their grid of initializations.
* `fit_isoflop`: per compute budget, a parabola of loss in log N; its minimum N_opt(C) ~ C^a.
* `compute_frontier`: the lower envelope of all runs' loss-vs-FLOPs curves, fitted as L(C).
* `fit_power_law_ci`: the power law with a calibrated parametric-bootstrap interval on every
  parameter (noise level drawn per resample; its coverage is tested); its refits also give the
  pointwise `band` that the plots draw. `chinchilla_ci`, `isoflop_ci`: the same for L(N, D)
  and IsoFLOP optima.
* `extrapolation_check`: fit without the largest model(s), predict them with a 95% prediction
  interval, a verdict and the miss as a fraction of L - E.
* `size_points`: one L(N) point per size (seed means, lr optimum from a parabola in log lr).
* `cooldown_checks`: the checks of a joint L(N, D) from WSD cooldowns.
* `analyze` (per directory or merged, per tags.group), `fits_table`, `fits_json`: all of the
  above, as launch.compare prints and records it.
"""

import contextlib
import dataclasses
import itertools
import json
import os

import numpy as np
from scipy import optimize, special

from core import files, rundir


@dataclasses.dataclass
class Run:
  """One finished training run of a sweep (see the format in launch/train.py's outputs)."""

  name: str
  n_params: int
  n_nonembed: int
  flops_per_token: float
  tokens: int
  final_eval_loss: float
  final_eval_loss_sem: float
  tags: dict
  config: dict
  wall_time_s: float | None
  curve: dict  # 'train' and 'eval': dicts of np arrays: step, tokens, flops, loss


def _read_curves(path: str) -> dict:
  """Train and eval curves of a metrics.jsonl; ValueError naming the file and line if corrupt."""
  records = {'train': {}, 'eval': {}}
  lines = files.read_text(path).splitlines() if files.exists(path) else []
  for i, line in enumerate(lines, 1):
    try:
      r = json.loads(line)
      key = 'loss' if r['kind'] == 'train' else 'eval_loss'
      if r.get(key) is not None:
        sem = r.get('eval_loss_sem')
        row = (r['tokens'], r['flops'], r[key], np.nan if sem is None else sem)
        records[r['kind']][r['step']] = row  # later wins
    except (ValueError, KeyError, TypeError) as e:
      why = f'missing key {e}' if isinstance(e, KeyError) else type(e).__name__
      raise ValueError(f'{path}: line {i} is not a metrics record ({why})') from None
  curves = {}
  for kind, by_step in records.items():
    steps = sorted(by_step)
    cols = np.array([by_step[s] for s in steps], dtype=float).reshape(-1, 4)
    curves[kind] = {
      'step': np.array(steps),
      'tokens': cols[:, 0],
      'flops': cols[:, 1],
      'loss': cols[:, 2],
      'sem': cols[:, 3],  # nan where the record has none (train records)
    }
  return curves


# What a fit needs of a run's summary (core/rundir.Summary); a summary without one is unreadable.
_FIT_KEYS = (
  'n_params',
  'n_params_nonembed',
  'flops_per_token',
  'tokens_seen',
  'final_eval_loss',
  'final_eval_loss_sem',
)


def _load_run(run: rundir.RunDir, name: str) -> Run:
  """One finished run; ValueError naming the file if its summary or metrics are unreadable."""
  try:
    s = run.read_summary(required=_FIT_KEYS)
    return Run(
      name=name,
      n_params=s.n_params,
      n_nonembed=s.n_params_nonembed,
      flops_per_token=s.flops_per_token,
      tokens=s.tokens_seen,
      final_eval_loss=s.final_eval_loss,
      final_eval_loss_sem=s.final_eval_loss_sem,
      tags=s.tags,
      config=s.config,
      wall_time_s=s.wall_time_s,
      curve=_read_curves(run.metrics_path),
    )
  except KeyError as e:
    raise ValueError(f'{run.summary_path}: missing key {e}') from None
  except (OSError, TypeError, AttributeError, json.JSONDecodeError) as e:
    raise ValueError(f'{run.summary_path}: unreadable ({type(e).__name__}: {e})') from None


def _no_runs(sweep_dir: str) -> str:
  return f'{sweep_dir} has no finished runs ({rundir.RUNS}/*/{rundir.SUMMARY})'


def _raise(message: str) -> None:
  raise ValueError(message)


def load_sweep(sweep_dir: str, on_bad=_raise) -> tuple[list[Run], list[str]]:
  """(finished runs, names of runs without a summary) of a sweep directory (local or gs://).

  A run whose summary or metrics cannot be read is passed to `on_bad` as one line naming the
  file (by default that is a ValueError; launch.compare prints it and skips the run).
  """
  runs, unfinished = [], []
  sweep = rundir.SweepDir(sweep_dir)
  for name in sweep.run_names():
    run = sweep.run(name)
    if not run.done():
      unfinished.append(name)
      continue
    try:
      runs.append(_load_run(run, name))
    except ValueError as e:
      on_bad(str(e))
  return runs, unfinished


@dataclasses.dataclass
class PowerLaw:
  """L(x) = E + A * x^-alpha; r2 is the coefficient of determination of log L."""

  E: float
  A: float
  alpha: float
  r2: float
  n: int

  def predict(self, x):
    return self.E + self.A * np.power(np.asarray(x, float), -self.alpha)

  def params(self) -> dict:
    return {'E': self.E, 'A': self.A, 'alpha': self.alpha}


def _r2(y, pred) -> float:
  ly, lp = np.log(y), np.log(pred)
  ss_res = np.sum((ly - lp) ** 2)
  ss_tot = np.sum((ly - ly.mean()) ** 2)
  return float(1 - ss_res / ss_tot) if ss_tot > 0 else float('nan')


def fit_power_law(x, y, with_offset: bool = True) -> PowerLaw:
  """Fits L = E + A x^-alpha (E = 0 if not with_offset) to points (x, y), in log space.

  Parameters are (log A, alpha, E / min(y)) so that E stays in [0, min y); several starting
  alphas guard against local minima.
  """
  x, y = np.asarray(x, float), np.asarray(y, float)
  if len(x) < (3 if with_offset else 2):
    raise ValueError(f'need at least {3 if with_offset else 2} points to fit, got {len(x)}')
  lx, ly, ymin = np.log(x), np.log(y), y.min()

  def model(p):
    log_a, alpha, frac = p if with_offset else (*p, 0.0)
    return np.log(frac * ymin + np.exp(log_a - alpha * lx))

  best = None
  for alpha0, frac0 in itertools.product(
    (0.05, 0.2, 0.5, 1.0), (0.0, 0.5, 0.9) if with_offset else (0.0,)
  ):
    # Start with the line through the extremes of what is left after the offset.
    resid = np.maximum(y - frac0 * ymin, 1e-12)
    log_a0 = float(np.mean(np.log(resid) + alpha0 * lx))
    p0 = [log_a0, alpha0, frac0] if with_offset else [log_a0, alpha0]
    lo = [-np.inf, 0.0, 0.0] if with_offset else [-np.inf, 0.0]
    hi = [np.inf, 5.0, 0.999] if with_offset else [np.inf, 5.0]
    res = optimize.least_squares(lambda p: model(p) - ly, p0, bounds=(lo, hi))
    if best is None or res.cost < best.cost:
      best = res
  log_a, alpha, frac = best.x if with_offset else (*best.x, 0.0)
  fit = PowerLaw(E=float(frac * ymin), A=float(np.exp(log_a)), alpha=float(alpha), r2=0.0, n=len(x))
  fit.r2 = _r2(y, fit.predict(x))
  return fit


@dataclasses.dataclass
class Chinchilla:
  """L(N, D) = E + A / N^alpha + B / D^beta."""

  E: float
  A: float
  B: float
  alpha: float
  beta: float

  def predict(self, n, d):
    n, d = np.asarray(n, float), np.asarray(d, float)
    return self.E + self.A / n**self.alpha + self.B / d**self.beta

  def optimal_allocation(self, compute, flops_per_token=None):
    """N_opt, D_opt minimizing L at compute C.

    With `flops_per_token` (a function of N: the runs' own count, e.g. PaLM's, which is
    1.15-1.97x 6N at small sizes) C = flops_per_token(N) D, solved numerically; without it
    C = 6 N D and the closed form of Hoffmann et al. (eq. 4).
    """
    if flops_per_token is None:
      a, b = self.beta / (self.alpha + self.beta), self.alpha / (self.alpha + self.beta)
      g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
      c = np.asarray(compute, float) / 6
      return g * c**a, c**b / g
    compute = np.atleast_1d(np.asarray(compute, float))
    n0, _ = self.optimal_allocation(compute)
    n_opt = []
    for c, n in zip(compute, n0, strict=True):
      loss = lambda ln, c=c: self.predict(np.exp(ln), c / flops_per_token(np.exp(ln)))  # noqa: E731
      res = optimize.minimize_scalar(loss, bounds=(np.log(n) - 8, np.log(n) + 8), method='bounded')
      n_opt.append(np.exp(res.x))
    n_opt = np.array(n_opt)
    return n_opt, compute / flops_per_token(n_opt)

  def params(self) -> dict:
    return {'E': self.E, 'A': self.A, 'B': self.B, 'alpha': self.alpha, 'beta': self.beta}


def _huber(r, delta):
  a = np.abs(r)
  return np.where(a <= delta, 0.5 * r**2, delta * (a - 0.5 * delta))


def _huber_grad(r, delta):
  return np.clip(r, -delta, delta)


def fit_chinchilla(
  n, d, loss, delta: float = 1e-3, refine: int = 30, start: Chinchilla | None = None
) -> Chinchilla:
  """Hoffmann et al.'s fit: Huber on log L, L-BFGS from a grid of initializations.

  Their grid has 4,500 points (alpha, beta in {0, .5, ..., 2}, e in {-1, -.5, ..., 1},
  a, b in {0, 5, ..., 25}); the objective is evaluated at all of them and L-BFGS (with the
  analytic gradient) runs from the `refine` best, keeping the lowest minimum. With `start`
  (a bootstrap refit) L-BFGS runs from it alone.
  """
  ln, ld, ll = np.log(np.asarray(n, float)), np.log(np.asarray(d, float)), np.log(loss)

  def objective(p):
    a, b, e, alpha, beta = p
    terms = np.stack([a - alpha * ln, b - beta * ld, np.full_like(ln, e)])
    lse = special.logsumexp(terms, axis=0)
    r = lse - ll
    w = np.exp(terms - lse)  # softmax weights: d lse / d term
    g = _huber_grad(r, delta)
    grad = np.array(
      [
        np.sum(g * w[0]),
        np.sum(g * w[1]),
        np.sum(g * w[2]),
        -np.sum(g * w[0] * ln),
        -np.sum(g * w[1] * ld),
      ]
    )
    return float(np.sum(_huber(r, delta))), grad

  grid = np.array(
    list(
      itertools.product(
        np.arange(0, 30, 5.0),
        np.arange(0, 30, 5.0),
        np.arange(-1, 1.5, 0.5),
        np.arange(0, 2.5, 0.5),
        np.arange(0, 2.5, 0.5),
      )
    )
  )
  if start is not None:
    s = start
    starts = [np.array([np.log(s.A), np.log(s.B), np.log(s.E), s.alpha, s.beta])]
  else:
    a, b, e, alpha, beta = (grid[:, i : i + 1] for i in range(5))  # the objective, all at once
    terms = np.stack([a - alpha * ln, b - beta * ld, np.broadcast_to(e, (len(grid), len(ln)))])
    values = np.sum(_huber(special.logsumexp(terms, axis=0) - ll, delta), axis=1)
    starts = grid[np.argsort(values)[:refine]]
  best = None
  for p0 in starts:
    res = optimize.minimize(
      objective,
      p0,
      jac=True,
      method='L-BFGS-B',
      options={'maxiter': 2000, 'ftol': 1e-15, 'gtol': 1e-12},
    )
    if best is None or res.fun < best.fun:
      best = res
  a, b, e, alpha, beta = best.x
  return Chinchilla(
    E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)), alpha=float(alpha), beta=float(beta)
  )


def chinchilla_ci(
  n, d, loss, clusters=None, n_boot: int = 200, seed: int = 0, level=0.95, start=None
):
  """fit_chinchilla with a run-resampling bootstrap: (fit, {param: (lo, hi)}, refits).

  Each resample draws runs with replacement, or whole clusters of runs (`clusters`: a label
  per run, e.g. the stable run a set of cooldown branches share, whose losses are not
  independent), and refits from the fit. The intervals include a = beta / (alpha + beta),
  the exponent of N_opt ~ C^a.
  """
  n, d, loss = (np.asarray(v, float) for v in (n, d, loss))
  fit = fit_chinchilla(n, d, loss, start=start)
  labels = np.arange(len(n)) if clusters is None else np.asarray(clusters)
  groups = [np.flatnonzero(labels == u) for u in np.unique(labels)]
  rng = np.random.default_rng(seed)
  fits = []
  for _ in range(n_boot):
    idx = np.concatenate([groups[i] for i in rng.integers(len(groups), size=len(groups))])
    if len(np.unique(n[idx])) < 2 or len(np.unique(d[idx])) < 2:
      continue
    fits.append(fit_chinchilla(n[idx], d[idx], loss[idx], start=fit))
  samples = {k: [f.params()[k] for f in fits] for k in fit.params()}
  samples['a'] = [f.beta / (f.alpha + f.beta) for f in fits]
  q = (1 - level) / 2 * 100
  ci = {
    k: (float(np.percentile(v, q)), float(np.percentile(v, 100 - q)))
    for k, v in samples.items()
    if v
  }
  return fit, ci, fits


@dataclasses.dataclass
class IsoFlop:
  budgets: np.ndarray  # C of each group
  n_opt: np.ndarray  # the parabola's minimum in N, per budget
  loss_opt: np.ndarray
  parabolas: list  # np.poly1d of loss in log10 N, per budget
  exponent: float  # N_opt ~ C^exponent
  coefficient: float
  n_opt_ci: list | None = None  # 95% (lo, hi) per budget, from isoflop_ci
  exponent_ci: tuple | None = None
  ci_note: str = ''  # how the intervals were made, and how many resamples lost an optimum

  def record(self) -> dict:
    """What the JSON keeps: the budgets, their N_opt and the exponent (with intervals)."""
    return {
      'budgets': self.budgets.tolist(),
      'n_opt': self.n_opt.tolist(),
      'exponent': self.exponent,
      'n_opt_ci95': self.n_opt_ci,
      'exponent_ci95': self.exponent_ci,
      'ci_note': self.ci_note,
    }


def fit_isoflop(
  runs: list[Run], budget_key: str = 'budget_flops', n_boot: int = 200, seed: int = 0
) -> IsoFlop:
  """Per compute budget, loss vs log N is a parabola; its minima give N_opt(C) ~ C^a.

  A budget whose minimum is not inside its measured sizes gives no N_opt (an extrapolated
  vertex is not a measurement). Bootstrap intervals: isoflop_ci.
  """
  groups: dict[float, list[Run]] = {}
  for r in runs:
    c = float(r.tags.get(budget_key) or 0)
    if c > 0:
      groups.setdefault(c, []).append(r)
  groups = {c: g for c, g in groups.items() if len(g) >= 3}
  if len(groups) < 2:
    raise ValueError(f'IsoFLOP needs >= 2 budgets with >= 3 runs each (tags.{budget_key})')
  profiles = {}
  for c in sorted(groups):
    g = groups[c]
    profiles[c] = (np.log10([r.n_nonembed for r in g]), [r.final_eval_loss for r in g])
  fit = _isoflop_from_profiles(profiles, inside=True, what='budgets')
  return (
    isoflop_ci(
      fit,
      profiles,
      [np.mean([r.final_eval_loss_sem for r in groups[c]]) for c in profiles],
      n_boot,
      seed,
    )
    if n_boot
    else fit
  )


def isoflop_ci(fit, profiles: dict, sems, n_boot: int = 200, seed: int = 0, level=0.95):
  """Bootstrap intervals on every N_opt and on the exponent of an IsoFLOP fit.

  Parametric: each budget's losses are redrawn around its parabola with sigma^2 = the pooled
  parabola residuals' RSS / chi^2_dof (dof = sum of points - 3 over budgets; the SEM when no
  degree of freedom is left), then refitted. A resample in which some budget's minimum leaves
  its measured sizes has no N_opt for it: such resamples are counted in `ci_note`, and the
  intervals come from the rest (an interval is given only if >= 80% kept their optima).
  """
  keep = {c: (np.asarray(ln, float), np.asarray(v, float)) for c, (ln, v) in profiles.items()}
  keep = {c: keep[c] for c in fit.budgets}
  sem_of = dict(zip(profiles, sems, strict=True))
  rss = sum(
    float(np.sum((np.poly1d(np.polyfit(ln, v, 2))(ln) - v) ** 2)) for ln, v in keep.values()
  )
  dof = sum(len(v) - 3 for _, v in keep.values())
  rng = np.random.default_rng(seed)
  n_opts, exps, lost = [], [], 0
  for _ in range(n_boot):
    sigma2 = rss / rng.chisquare(dof) if dof > 0 else None
    star = {}
    for c, (ln, v) in keep.items():
      sd = np.sqrt(sigma2) if sigma2 is not None else sem_of[c]
      star[c] = (ln, np.poly1d(np.polyfit(ln, v, 2))(ln) + rng.normal(0, sd, len(v)))
    try:
      b = _isoflop_from_profiles(star, inside=True, what='budgets')
    except ValueError:
      lost += 1
      continue
    if len(b.budgets) < len(keep):
      lost += 1
      continue
    n_opts.append(b.n_opt)
    exps.append(b.exponent)
  note = f'parametric bootstrap, {n_boot} resamples, {lost} lost an optimum inside the sizes'
  if len(exps) < 0.8 * n_boot:
    return dataclasses.replace(fit, ci_note=note + ': no interval')
  q = (1 - level) / 2 * 100
  n_opts = np.array(n_opts)
  n_ci = [(float(np.percentile(col, q)), float(np.percentile(col, 100 - q))) for col in n_opts.T]
  e_ci = (float(np.percentile(exps, q)), float(np.percentile(exps, 100 - q)))
  return dataclasses.replace(fit, n_opt_ci=n_ci, exponent_ci=e_ci, ci_note=note)


def _isoflop_from_profiles(profiles: dict, inside: bool, what: str) -> IsoFlop:
  """{C: (log10 N, loss)} -> a parabola per C, its minimum N_opt(C), then N_opt ~ C^a.

  A profile whose parabola opens downwards (or, with `inside`, whose minimum lies outside the
  sizes measured) has no optimum and is left out.
  """
  budgets, n_opt, loss_opt, parabolas = [], [], [], []
  for c, (ln, loss) in profiles.items():
    ln = np.asarray(ln, float)
    poly = np.poly1d(np.polyfit(ln, loss, 2))
    if poly.coeffs[0] <= 0:
      continue  # no minimum: these sizes miss the optimum
    x_min = -poly.coeffs[1] / (2 * poly.coeffs[0])
    if inside and not ln.min() < x_min < ln.max():
      continue
    budgets.append(c)
    n_opt.append(10**x_min)
    loss_opt.append(float(poly(x_min)))
    parabolas.append(poly)
  if len(budgets) < 2:
    raise ValueError(f'fewer than 2 {what} have a loss minimum inside their size range')
  slope, intercept = np.polyfit(np.log(budgets), np.log(n_opt), 1)
  return IsoFlop(
    np.array(budgets),
    np.array(n_opt),
    np.array(loss_opt),
    parabolas,
    float(slope),
    float(np.exp(intercept)),
  )


def _warmup_steps(run) -> int:
  return int((getattr(run, 'config', None) or {}).get('train', {}).get('warmup_steps', 0) or 0)


def compute_frontier(runs: list[Run], kind: str = 'eval'):
  """(C, L, SEM) of the lower envelope of every run's loss-vs-FLOPs points.

  Each point of the envelope is a measured (C, L): the C at which that loss was reached, not
  a grid value after it. Evaluations taken during a run's warmup (step <= train.warmup_steps)
  are left out: a run in warmup is not yet on the schedule it is meant to show.
  """
  cs, ls, ss = [], [], []
  for r in runs:
    c = r.curve.get(kind, {})
    if not len(c.get('flops', [])):
      continue
    keep = (c['flops'] > 0) & (np.asarray(c['step']) > _warmup_steps(r))
    cs.append(c['flops'][keep])
    ls.append(c['loss'][keep])
    ss.append(np.asarray(c.get('sem', np.full(len(keep), np.nan)))[keep])
  if not cs or not sum(len(c) for c in cs):
    raise ValueError(f'no {kind} curves after warmup to build a compute frontier from')
  c, loss, sem = np.concatenate(cs), np.concatenate(ls), np.concatenate(ss)
  order = np.lexsort((loss, c))
  c, loss, sem = c[order], loss[order], sem[order]
  best = np.minimum.accumulate(loss)
  on = np.concatenate([[True], loss[1:] < best[:-1]])  # a new best loss at this C
  return c[on], loss[on], sem[on]


FRONTIER_TOLERANCE_SEM = 2.0  # a frontier law must pass within this many SEM of every point


def fit_compute_frontier(runs: list[Run], kind: str = 'eval') -> PowerLaw:
  """L(C) = E + A C^-alpha through the envelope, or ValueError when it does not match it.

  It matches when every envelope point lies within FRONTIER_TOLERANCE_SEM of its own eval SEM
  (1% of L where the records have no SEM); a plateau that a power law cannot follow gets no
  fit, and the error says where and by how much it misses.
  """
  c, loss, sem = compute_frontier(runs, kind)
  if len(c) < POWER_LAW_PARAMS + 2:
    raise ValueError(f'the compute frontier has {len(c)} points; a fit needs >= 5')
  fit = fit_power_law(c, loss)
  tol = FRONTIER_TOLERANCE_SEM * np.where(np.isfinite(sem) & (sem > 0), sem, 0.005 * loss)
  miss = np.abs(fit.predict(c) - loss) / tol
  worst = int(np.argmax(miss))
  if miss[worst] > 1:
    raise ValueError(
      f'no power law matches the compute frontier: the best one misses C={c[worst]:.3g} by '
      f'{abs(fit.predict(c[worst]) - loss[worst]):.3f} nats '
      f'({FRONTIER_TOLERANCE_SEM * miss[worst]:.1f} SEM)'
    )
  return fit


def intervals(fits: list, level: float = 0.95) -> dict:
  """Percentile intervals {param: (lo, hi)} of bootstrap fits' parameters."""
  samples: dict[str, list[float]] = {}
  for fit in fits:
    for k, v in fit.params().items():
      samples.setdefault(k, []).append(v)
  q = (1 - level) / 2 * 100
  return {
    k: (float(np.percentile(v, q)), float(np.percentile(v, 100 - q))) for k, v in samples.items()
  }


def band(fits: list, x, level: float = 0.95, min_fits: int = 10):
  """Pointwise (lo, hi) band of the bootstrap fits' predictions at x; None if too few fits."""
  if len(fits) < min_fits:
    return None
  curves = np.array([f.predict(x) for f in fits])
  q = (1 - level) / 2 * 100
  return np.percentile(curves, q, axis=0), np.percentile(curves, 100 - q, axis=0)


def extrapolation_check(
  x, y, holdout: int = 1, sem=None, seed_var=None, seed_dof=0, n_boot: int = 1000, level=0.95
) -> dict:
  """Fit L(x) without the `holdout` largest x, predict the largest: a test that can fail.

  The prediction interval is the bootstrap's (fit_power_law_ci on the smaller points): each
  refit's prediction at the largest x times a new draw of that refit's noise, percentiles at
  `level`. The verdict is 'pass' when the measured loss lies inside it, 'fail' when not, and
  'none' (with the reason) when the smaller points leave no interval. The error is also given
  as a fraction of the reducible loss L - E (E of the smaller fit): a miss of 1% of L can be
  a quarter of what the law is about.
  """
  order = np.argsort(x)
  x, y = np.asarray(x, float)[order], np.asarray(y, float)[order]
  keep = slice(None, len(x) - holdout)
  sub = lambda v: None if v is None else np.asarray(v, float)[order][keep]  # noqa: E731
  law = fit_power_law_ci(x[keep], y[keep], sub(sem), n_boot, 0, level, sub(seed_var), seed_dof)
  predicted, measured = float(law.law.predict(x[-1])), float(y[-1])
  out = {
    'x': float(x[-1]),
    'predicted': predicted,
    'measured': measured,
    'error_percent': 100 * (predicted - measured) / measured,
    'error_fraction_of_reducible': (predicted - measured) / (measured - law.law.E),
    'level': level,
  }
  if not law.fits:
    return {**out, 'verdict': 'none', 'why': law.note}
  rng = np.random.default_rng(1)
  at = np.array([f.predict(x[-1]) for f in law.fits])
  draws = at * np.exp(law.sigma_draws[:, -1] * rng.normal(size=len(at)))
  q = (1 - level) / 2
  lo, hi = np.quantile(draws, [q, 1 - q])
  inside = bool(lo <= measured <= hi)
  return {**out, 'interval': (float(lo), float(hi)), 'verdict': 'pass' if inside else 'fail'}


# -- A sweep's analysis: every fit, the one bootstrap, the table and the JSON record -------------


MIN_SPAN_DECADES = 0.5  # an L(N) over a narrower span of N is refused


LR_WINDOW = 5  # a size's lr optimum: the parabola through this many rates around its best


def _run_lr(r: Run) -> float | None:
  # tags.lr of a run made without an lr grid is the config default 0.0: its peak lr is train.lr
  lr = r.tags.get('lr') or (r.config.get('train') or {}).get('lr')
  return None if lr is None else float(lr)


def _size_key(r: Run) -> tuple:
  m = r.config.get('model', {}) if isinstance(r.config, dict) else {}
  return (r.n_params, r.n_nonembed, m.get('num_layers'), m.get('d_model'), m.get('num_heads'))


def size_points(runs: list[Run], x_kind: str = 'nonembed') -> dict:
  """The L(N) points of a group of runs: one per size, with its noise and how it was chosen.

  * A size is a model shape (its parameter counts, layers, width and heads), whether or not its
    runs carry tags.size, so a sweep with seeds merges with one without (--merge); where a size
    has runs at several token counts, the largest count is used.
  * Seeds (tags.seed) of the same size and lr are averaged: the mean, not the minimum. Their
    variance, pooled over every (size, lr) cell with >= 2 seeds, is the seed variance: per
    point, of the log of its mean (var / seeds / L^2), on sum(seeds - 1) degrees of freedom.
  * A size with >= 3 learning rates takes its optimum from a parabola of the seed-mean loss in
    log lr through the LR_WINDOW rates around its best (all of a grid of <= LR_WINDOW), and the
    loss at that optimum; an optimum outside them (or a parabola without a minimum, or only 2
    rates) leaves the size out, and `notes` says so.
  Returns arrays n, loss, sem, seed_var (None without seeds), seed_dof, seeds, lr_opt, and notes.
  """
  by_size: dict = {}
  for r in runs:
    by_size.setdefault(_size_key(r), []).append(r)
  cells, notes = {}, []
  for key, rs in by_size.items():
    top = max(r.tokens for r in rs)
    rs = [r for r in rs if r.tokens >= 0.99 * top]
    by_lr: dict = {}
    for r in rs:
      by_lr.setdefault(_run_lr(r), []).append(r)
    cells[key] = by_lr
  sq, dof = 0.0, 0
  for by_lr in cells.values():
    for rs in by_lr.values():
      v = np.array([r.final_eval_loss for r in rs])
      sq, dof = sq + float(np.sum((v - v.mean()) ** 2)), dof + len(v) - 1
  pooled = sq / dof if dof else None
  pts = []
  for by_lr in cells.values():
    rs0 = next(iter(by_lr.values()))
    n = rs0[0].n_nonembed if x_kind == 'nonembed' else rs0[0].n_params
    means = {lr: np.mean([r.final_eval_loss for r in rs]) for lr, rs in by_lr.items()}
    sem = float(np.mean([r.final_eval_loss_sem for rs in by_lr.values() for r in rs]))
    seeds = float(np.mean([len(rs) for rs in by_lr.values()]))
    if len(by_lr) == 1:
      (lr,) = by_lr
      pts.append((n, means[lr], sem, seeds, lr))
      continue
    name = rs0[0].tags.get('size') or f'N={n:.3g}'
    lrs = sorted(lr for lr in by_lr if lr is not None)
    if len(lrs) < 3:
      notes.append(f'size {name}: {len(lrs)} learning rates, a parabola needs 3: left out')
      continue
    # the parabola through the (up to) LR_WINDOW rates around the best: far from its optimum a
    # loss-vs-lr curve is no parabola (a plateau below, a cliff above) and would pull the vertex
    i = int(np.argmin([means[lr] for lr in lrs]))
    lo = max(0, min(i - LR_WINDOW // 2, len(lrs) - LR_WINDOW))
    window = lrs[lo : lo + LR_WINDOW]
    x = np.log(window)
    a, b, c = np.polyfit(x, [means[lr] for lr in window], 2)
    vertex = -b / (2 * a) if a > 0 else None
    if vertex is None or not x[0] < vertex < x[-1]:
      best = lrs[i]
      notes.append(
        f'size {name}: optimum lr not inside the grid [{lrs[0]:.3g}, {lrs[-1]:.3g}] '
        f'(best grid point {best:.3g}): left out'
      )
      continue
    pts.append((n, float(np.polyval([a, b, c], vertex)), sem, seeds, float(np.exp(vertex))))
  pts.sort()
  n, loss, sem, seeds, lr_opt = (
    (np.array(v, dtype=float) for v in zip(*pts, strict=True)) if pts else (np.zeros(0),) * 5
  )
  seed_var = None if pooled is None else pooled / seeds / loss**2
  return {
    'n': n,
    'loss': loss,
    'sem': sem,
    'seeds': seeds,
    'lr_opt': lr_opt,
    'seed_var': seed_var,
    'seed_dof': dof,
    'seed_sd': None if pooled is None else np.sqrt(pooled),
    'notes': notes,
  }


MIN_MATCHING_PAIRS = 2  # cooldown/cosine pairs that must agree for the premise to pass


def cooldown_checks(cooldown: list[Run], cosine: list[Run], n_boot: int = 200, level=0.95):
  """The checks of a joint L(N, D) from WSD cooldowns (experiments/sweeps/cooldown.py).

  * match: each cosine run against the cooldown of the same N and D: the difference and its
    standard error sqrt(SEM_cos^2 + SEM_cool^2); 'pass' within 2 of them.
  * premise: how many pairs match ('pass' with >= MIN_MATCHING_PAIRS), and the smallest D
    from which every pair at that D and above matches (None: not even at the largest).
  * holdout: Chinchilla's law fitted without the largest (N, D) corner (largest N at its
    largest D) predicts it; the 95% prediction interval is the run-bootstrap refits'
    predictions times a draw of the fit's residual scatter; 'pass' if the corner lies inside.
  * a = beta / (alpha + beta) with its interval, from the fit over every cooldown.
  """
  n = np.array([r.n_nonembed for r in cooldown], float)
  d = np.array([r.tokens for r in cooldown], float)
  loss = np.array([r.final_eval_loss for r in cooldown])
  out = {'match': []}
  for c in cosine:
    same = [r for r in cooldown if r.n_nonembed == c.n_nonembed and r.tokens == c.tokens]
    if not same:
      out['match'].append({'run': c.name, 'verdict': 'none', 'why': 'no cooldown at its N, D'})
      continue
    r = same[0]
    diff = r.final_eval_loss - c.final_eval_loss
    se = float(np.hypot(r.final_eval_loss_sem, c.final_eval_loss_sem))
    out['match'].append(
      {
        'run': c.name,
        'cooldown': r.name,
        'n': c.n_nonembed,
        'tokens': c.tokens,
        'cosine_loss': c.final_eval_loss,
        'cooldown_loss': r.final_eval_loss,
        'difference': diff,
        'se': se,
        'verdict': 'pass' if abs(diff) <= 2 * se else 'fail',
      }
    )
  pairs = [m for m in out['match'] if m['verdict'] != 'none']
  by_tokens: dict = {}
  for m in pairs:
    by_tokens.setdefault(m['tokens'], []).append(m['verdict'] == 'pass')
  holds_from = None  # the smallest D from which every pair at that D and above matches
  for t in sorted(by_tokens, reverse=True):
    if not all(by_tokens[t]):
      break
    holds_from = t
  passed = sum(m['verdict'] == 'pass' for m in pairs)
  out['premise'] = {
    'passed': passed,
    'pairs': len(pairs),
    'holds_from_tokens': holds_from,
    'verdict': 'pass' if passed >= MIN_MATCHING_PAIRS else 'fail',
  }
  fit, ci, fits = chinchilla_ci(n, d, loss, n_boot=n_boot)
  out['fit'], out['ci'] = fit, ci
  corner = int(np.argmax(np.where(n == n.max(), d, -np.inf)))
  rest = np.arange(len(n)) != corner
  sub, _, sub_fits = chinchilla_ci(n[rest], d[rest], loss[rest], n_boot=n_boot, seed=1, start=fit)
  resid = np.log(loss[rest]) - np.log(sub.predict(n[rest], d[rest]))
  scatter = float(np.sqrt(np.sum(resid**2) / max(rest.sum() - 5, 1)))
  rng = np.random.default_rng(2)
  pred = np.array([f.predict(n[corner], d[corner]) for f in sub_fits])
  pred = pred * np.exp(scatter * rng.standard_normal(len(pred)))
  q = (1 - level) / 2
  lo, hi = (float(v) for v in np.quantile(pred, [q, 1 - q]))
  out['holdout'] = {
    'n': float(n[corner]),
    'tokens': float(d[corner]),
    'predicted': float(sub.predict(n[corner], d[corner])),
    'measured': float(loss[corner]),
    'interval': (lo, hi),
    'verdict': 'pass' if lo <= loss[corner] <= hi else 'fail',
  }
  return out


def cooldown_lines(c: dict, iso_a=None) -> list[str]:
  """The printed form of cooldown_checks, with a beside the IsoFLOP value and the references."""
  lines = []
  for m in c['match']:
    if m['verdict'] == 'none':
      lines.append(f'  cosine {m["run"]}: {m["why"]}')
      continue
    lines.append(
      f'  cosine vs cooldown at N={m["n"]:.3g}, D={m["tokens"]:.3g}: {m["cosine_loss"]:.4f} vs '
      f'{m["cooldown_loss"]:.4f} (difference {m["difference"]:+.4f}, 2 SE = {2 * m["se"]:.4f}): '
      f'{m["verdict"].upper()}'
    )
  p = c['premise']
  if p['pairs']:
    where = (
      f'every pair from D = {p["holds_from_tokens"]:.3g} up'
      if p['holds_from_tokens']
      else 'not at the largest D'
    )
    lines.append(
      f'  cooldown stands for cosine: {p["passed"]} of {p["pairs"]} pairs within 2 SE, {where}: '
      f'{p["verdict"].upper()} (needs >= {MIN_MATCHING_PAIRS} pairs)'
    )
  f, ci, h = c['fit'], c['ci'], c['holdout']
  lines.append(
    '  L(N, D) over the cooldowns: '
    + ', '.join(f'{k}={v:.4g}{format_ci(ci.get(k))}' for k, v in f.params().items())
  )
  lines.append(
    f'  held-out corner N={h["n"]:.3g}, D={h["tokens"]:.3g}: predicted {h["predicted"]:.4f}, '
    f'95% prediction interval{format_ci(h["interval"])}, measured {h["measured"]:.4f}: '
    f'{h["verdict"].upper()}'
  )
  refs = ', '.join(f'{k} {v:.2f}' for k, v in REFERENCE_EXPONENTS.items())
  iso = 'IsoFLOP: not measured' if iso_a is None else f'IsoFLOP {iso_a:.2f}'
  lines.append(
    f'  N_opt ~ C^a: a = beta/(alpha+beta) = {f.beta / (f.alpha + f.beta):.3f}'
    f'{format_ci(ci.get("a"))} ({iso}; {refs})'
  )
  return lines


def load_sweeps(dirs: list[str], on_bad=_raise) -> tuple[list[Run], list[str]]:
  """load_sweep over several directories, merged; each run's name gets its directory's."""
  runs, unfinished = [], []
  for d in dirs:
    label = os.path.basename(os.path.normpath(d))
    rs, un = load_sweep(d, on_bad)
    if not rs:
      raise ValueError(_no_runs(d))
    runs += [dataclasses.replace(r, name=f'{label}/{r.name}') for r in rs]
    unfinished += [f'{label}/{u}' for u in un]
  return runs, unfinished


def analyze(dirs: list[str], x_kind='nonembed', n_boot=200, on_bad=_raise, merge=False) -> list:
  """analyze_runs for each directory (or all merged into one), and in each for each tags.group.

  A directory whose runs carry one group (or none) is one analysis labelled by the directory;
  with several groups each is its own analysis, labelled 'dir/group'.
  """
  if merge:
    runs, unfinished = load_sweeps(dirs, on_bad)
    sets = [('+'.join(os.path.basename(os.path.normpath(d)) for d in dirs), runs, unfinished)]
  else:
    sets = []
    for d in dirs:
      runs, unfinished = load_sweep(d, on_bad)
      if not runs:
        raise ValueError(_no_runs(d))
      sets.append((os.path.basename(os.path.normpath(d)), runs, unfinished))
  results = []
  for label, runs, unfinished in sets:
    groups: dict = {}
    for r in runs:
      groups.setdefault(str(r.tags.get('group') or ''), []).append(r)
    for g, rs in sorted(groups.items()):
      name = label if len(groups) == 1 else f'{label}/{g or "(no group)"}'
      results.append(analyze_runs(name, rs, unfinished if g == min(groups) else [], x_kind, n_boot))
      if g == 'cooldown' and 'cosine' in groups and len(rs) >= 6:
        results[-1]['cooldown'] = cooldown_checks(rs, groups['cosine'], max(n_boot, 20))
  return results


def analyze_sweep(sweep_dir: str, x_kind: str = 'nonembed', n_boot: int = 200, on_bad=_raise):
  """analyze_runs over every run of one sweep directory, whatever its groups."""
  runs, unfinished = load_sweep(sweep_dir, on_bad)
  if not runs:
    raise ValueError(_no_runs(sweep_dir))
  label = os.path.basename(os.path.normpath(sweep_dir))
  return analyze_runs(label, runs, unfinished, x_kind, n_boot)


def analyze_runs(label: str, runs: list, unfinished: list, x_kind='nonembed', n_boot=200) -> dict:
  """Every fit a set of runs allows (launch.compare draws and prints them).

  L(N) over size_points (>= 3 sizes spanning >= MIN_SPAN_DECADES; else `law_note` says why)
  with `n_boot` bootstrap refits (their parameter intervals and the pointwise band both come
  from these same refits), the extrapolation check (>= 4 sizes), the compute frontier,
  Chinchilla's L(N, D) (>= 6 runs over >= 2 sizes and token counts; clusters: tags.family)
  and IsoFLOP optima (tags.budget_flops), each with its intervals.
  """
  n = np.array([r.n_nonembed if x_kind == 'nonembed' else r.n_params for r in runs], float)
  loss = np.array([r.final_eval_loss for r in runs])
  out = {'label': label, 'runs': runs, 'unfinished': unfinished, 'n': n, 'loss': loss}
  pts = size_points(runs, x_kind)
  out['points'] = pts
  sizes, best = pts['n'], pts['loss']
  span = float(np.log10(sizes.max() / sizes.min())) if len(sizes) else 0.0
  if len(sizes) < 3:
    out['law_note'] = f'{len(sizes)} sizes: L(N) needs >= 3'
  elif span < MIN_SPAN_DECADES:
    out['law_note'] = (
      f'N spans {span:.2f} decades ({sizes.min():.3g} to {sizes.max():.3g}); L(N) needs '
      f'>= {MIN_SPAN_DECADES}: no exponent is fitted'
    )
  else:
    noise = {'sem': pts['sem'], 'seed_var': pts['seed_var'], 'seed_dof': pts['seed_dof']}
    # One bootstrap: its refits give the parameters' intervals and the plotted band.
    out['law'] = fit_power_law_ci(sizes, best, n=n_boot, **noise)
    out['fit'], out['ci'], out['boot_fits'] = out['law'].law, out['law'].ci, out['law'].fits
    out['fit_points'] = (sizes, best)
    if len(sizes) >= 4:
      out['extrapolation'] = extrapolation_check(sizes, best, n_boot=max(n_boot, 200), **noise)
  try:
    out['iso_curves'] = isoflop_from_curves(runs)
    out['iso_curves_ci'] = jackknife_ci(runs, lambda rs: isoflop_from_curves(rs).exponent)
  except ValueError as e:  # said, not hidden: at this scale there may be no optimum inside
    out['iso_curves_note'] = str(e)
  try:
    out['frontier'] = fit_compute_frontier(runs)
  except ValueError as e:
    out['frontier_note'] = str(e)
  tokens = np.array([r.tokens for r in runs], float)
  if len(np.unique(tokens)) >= 2 and len(np.unique(n)) >= 2 and len(runs) >= 6:
    clusters = [r.tags.get('family') or r.name for r in runs]
    fit, ci, _ = chinchilla_ci(n, tokens, loss, clusters, n_boot=min(n_boot, 200))
    out['chinchilla'], out['chinchilla_ci'] = fit, ci
  with contextlib.suppress(ValueError):
    out['isoflop'] = fit_isoflop(runs, n_boot=n_boot)
  return out


def _num(value, spec: str) -> str:
  return '-' if value is None else format(value, spec)


def fits_table(results: list[dict]) -> str:
  """The printed table of analyze_sweep results, one line per sweep (+ Chinchilla, IsoFLOP)."""
  head = (
    f'{"sweep":<18}{"runs":>5}  {"alpha [95% CI]":<24}{"E":>8}{"A":>10}{"R²":>8}'
    f'{"extrap.%":>10}{"frontier":>10}'
  )
  lines = [head, '-' * len(head)]
  for r in results:
    fit, ci = r.get('fit'), r.get('ci', {})
    alpha = _num(fit and fit.alpha, '.3f')
    if fit and 'alpha' in ci:
      alpha += f' [{ci["alpha"][0]:.3f}, {ci["alpha"][1]:.3f}]'
    ext, front = r.get('extrapolation'), r.get('frontier')
    lines.append(
      f'{r["label"]:<18}{len(r["runs"]):>5}  {alpha:<24}'
      f'{_num(fit and fit.E, ".3f"):>8}{_num(fit and fit.A, ".3g"):>10}'
      f'{_num(fit and fit.r2, ".3f"):>8}{_num(ext and ext["error_percent"], "+.2f"):>10}'
      f'{_num(front and front.alpha, ".3f"):>10}'
    )
    if 'chinchilla' in r:
      c, ci = r['chinchilla'], r.get('chinchilla_ci', {})
      lines.append(
        '  Chinchilla L(N, D): '
        + ', '.join(f'{k}={v:.4g}{format_ci(ci.get(k))}' for k, v in c.params().items())
        + f', a=beta/(alpha+beta)={c.beta / (c.alpha + c.beta):.3f}{format_ci(ci.get("a"))}'
      )
    if 'isoflop' in r:
      i = r['isoflop']
      lines.append(f'  IsoFLOP: N_opt ~ C^{i.exponent:.3f}{format_ci(i.exponent_ci)} ({i.ci_note})')
    lines.extend(science_lines(r))
    if 'cooldown' in r:
      lines.extend(cooldown_lines(r['cooldown'], r['isoflop'].exponent if 'isoflop' in r else None))
    if r['unfinished']:
      lines.append(f'  unfinished (not fitted): {", ".join(r["unfinished"])}')
  return '\n'.join(lines)


def fits_json(results: list[dict]) -> dict:
  """{sweep label: runs, unfinished and every fitted number} of analyze_sweep results."""
  out = {}
  for r in results:
    keys = ('name', 'n_nonembed', 'n_params', 'tokens', 'final_eval_loss', 'final_eval_loss_sem')
    d = {
      'runs': [{k: getattr(run, k) for k in keys} for run in r['runs']],
      'unfinished': r['unfinished'],
    }
    pts = r.get('points')
    if pts is not None:
      d['size_points'] = {
        k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in pts.items()
      }
    if 'law_note' in r:
      d['power_law_refused'] = r['law_note']
    if 'fit' in r:
      d['power_law'] = {
        **r['fit'].params(),
        'r2': r['fit'].r2,
        'ci95': r['ci'],
        'ci95_method': (
          f'parametric bootstrap, {len(r["boot_fits"])} refits, sigma per resample from the '
          "residuals' scaled-inverse-chi2 (seed variance when present), SEM as a common shift"
        ),
        'note': r['law'].note,
        'dof': r['law'].dof,
        'chi2_dof_seed': r['law'].chi2_dof,
      }
    if 'iso_curves' in r:
      d['nopt_from_curves'] = {
        **r['iso_curves'].record(),
        'ci95': r.get('iso_curves_ci'),
        'references': REFERENCE_EXPONENTS,
      }
    if 'extrapolation' in r:
      d['extrapolation'] = r['extrapolation']
    if 'frontier' in r:
      d['compute_frontier'] = {**r['frontier'].params(), 'r2': r['frontier'].r2}
    if 'frontier_note' in r:
      d['compute_frontier_refused'] = r['frontier_note']
    if 'chinchilla' in r:
      c = r['chinchilla']
      d['chinchilla'] = {
        **c.params(),
        'a': c.beta / (c.alpha + c.beta),
        'ci95': r.get('chinchilla_ci'),
        'ci95_method': 'bootstrap over runs (over tags.family where runs share one)',
      }
    if 'isoflop' in r:
      d['isoflop'] = r['isoflop'].record()
    if 'cooldown' in r:
      c = r['cooldown']
      d['cooldown'] = {
        'match': c['match'],
        'premise': c['premise'],
        'holdout': c['holdout'],
        'fit': {**c['fit'].params(), 'a': c['fit'].beta / (c['fit'].alpha + c['fit'].beta)},
        'ci95': c['ci'],
        'references': REFERENCE_EXPONENTS,
      }
    out[r['label']] = d
  return out


# -- Fits with a confidence interval on every parameter, IsoFLOP from curves, CSV output -------

# N_opt ~ C^a as published: Kaplan et al. 2020 (Sec. 6.1) and Hoffmann et al. 2022 (Table 2).
REFERENCE_EXPONENTS = {'Kaplan et al. 2020': 0.73, 'Hoffmann et al. 2022': 0.50}


@dataclasses.dataclass
class LawWithCI:
  """A PowerLaw and 95% intervals {param: (lo, hi)} from `fits`, its bootstrap refits.

  `noise`: the per-point sd of log L of the fitted residuals (the scale each resample's sd is
  drawn around); `dof`: the fit's degrees of freedom; `chi2_dof`: chi^2/dof of the fit against
  the seed variance (None without seeds); `note`: why there is no interval, if there is none.
  """

  law: PowerLaw
  ci: dict
  noise: np.ndarray
  fits: list  # the bootstrap refits (PowerLaw), for bands
  dof: int = 0
  chi2_dof: float | None = None
  note: str = ''
  sigma_draws: np.ndarray | None = None  # the sd of log L each refit was drawn with

  def relative_halfwidth(self, key: str) -> float:
    """Half the interval's width over the estimate (0.3: the estimate is +-30%)."""
    lo, hi = self.ci[key]
    return (hi - lo) / 2 / abs(self.law.params()[key])


POWER_LAW_PARAMS = 3  # E, A, alpha: an interval needs >= POWER_LAW_PARAMS + 2 points


def fit_power_law_ci(
  x, y, sem=None, n: int = 1000, seed: int = 0, level: float = 0.95, seed_var=None, seed_dof=0
) -> LawWithCI:
  """L = E + A x^-alpha with a parametric-bootstrap interval on E, A and alpha.

  The fit is fit_power_law's (least squares on log L, 0 <= E < min L). Each resample draws
  the noise of log L from what the data say about it, not from a fixed sd:
  * sigma^2 = RSS / chi^2_(n-3): the residuals' scaled-inverse-chi^2 posterior (Jeffreys
    prior), so that 3 degrees of freedom are not read as a known noise level;
  * with seeds (`seed_var`: each point's variance of log L of its seed mean, pooled on
    `seed_dof` degrees of freedom), sigma_i^2 is the larger of that and the seed variance,
    itself drawn from its own scaled-inverse-chi^2;
  * the evaluation SEM (`sem`, in nats) is a shift common to every point (all models are
    scored on the same held-out batches): one normal draw per resample moves all points
    together, which moves E and A, not alpha.
  Then log L* = log(fit) + sigma * z + shift, refitted (all resamples at once, by a batched
  Levenberg-Marquardt from the fit). Percentile intervals. Coverage of the alpha interval on
  synthetic 6-point ladders is tested (tests/test_scaling.py).

  With fewer than 5 points (3 parameters + 2) there is no interval: `ci` is empty and `note`
  says why.
  """
  x, y = np.asarray(x, float), np.asarray(y, float)
  law = fit_power_law(x, y)
  resid = np.log(y) - np.log(law.predict(x))
  dof = len(x) - POWER_LAW_PARAMS
  rss = float(np.sum(resid**2))
  noise = np.full_like(y, np.sqrt(rss / dof) if dof > 0 else 0.0)
  chi2 = None
  if seed_var is not None and seed_dof > 0 and dof > 0:
    seed_var = np.asarray(seed_var, float)
    chi2 = float(np.sum(resid**2 / seed_var) / dof)
  if len(x) < POWER_LAW_PARAMS + 2:
    note = (
      f'no interval: {len(x)} points for {POWER_LAW_PARAMS} parameters leave {dof} degrees '
      f'of freedom (an interval needs >= {POWER_LAW_PARAMS + 2} points)'
    )
    return LawWithCI(law, {}, noise, [], dof, chi2, note)
  if n <= 0:
    return LawWithCI(law, {}, noise, [], dof, chi2, 'no bootstrap asked for')
  rng = np.random.default_rng(seed)
  rel_sem = None if sem is None else np.asarray(sem, float) / y
  log_star, sd = _draw_log_losses(
    rng, np.log(law.predict(x))[None], np.array([rss]), dof, n, rel_sem, seed_var, seed_dof
  )
  fits = _refit_batch(law, x, log_star[0])
  return LawWithCI(law, intervals(fits, level), noise, fits, dof, chi2, '', sd[0])


def _draw_log_losses(rng, center, rss, dof, n, rel_sem=None, seed_var=None, seed_dof=0):
  """Resampled log losses (M, n, points) around M fitted ladders `center` (M, points).

  Per resample, sigma^2 = RSS / chi^2_dof (and, with seeds, the larger of that and the seed
  variance drawn the same way); the relative SEM enters as one shift common to all points.
  Returns the draws and the sd (M, n, points) each was drawn with.
  """
  m, points = center.shape
  var = rss[:, None, None] / rng.chisquare(dof, (m, n, 1))
  if seed_var is not None and seed_dof > 0:
    seed_draw = seed_dof / rng.chisquare(seed_dof, (m, n, 1))
    var = np.maximum(var, np.asarray(seed_var, float) * seed_draw)
  sd = np.broadcast_to(np.sqrt(var), (m, n, points))
  log_star = center[:, None, :] + sd * rng.normal(size=(m, n, points))
  if rel_sem is not None:
    log_star = log_star + rng.normal(0.0, float(np.mean(rel_sem)), (m, n, 1))
  return log_star, sd


def power_law_alpha_intervals(x, y, n: int = 200, seed: int = 0, level: float = 0.95, sem=None):
  """alpha and its bootstrap interval for many ladders at once: y (M, points) -> (M,), (M, 2).

  The same fit (multi-start, as fit_power_law's) and the same resampling as fit_power_law_ci,
  batched over ladders, for Monte Carlo checks of the interval's coverage.
  """
  x, y = np.asarray(x, float), np.asarray(y, float)
  lx, ly = np.log(x), np.log(y)
  m, points = y.shape
  ymin = y.min(axis=1)
  best, cost = None, None
  for alpha0, frac0 in itertools.product((0.05, 0.2, 0.5, 1.0), (0.0, 0.5, 0.9)):
    log_a0 = np.mean(np.log(np.maximum(y - frac0 * ymin[:, None], 1e-12)) + alpha0 * lx, axis=1)
    p0 = np.stack([log_a0, np.full(m, alpha0), np.full(m, frac0)], axis=1)
    p, c = _fit_batch(lx, ly, p0, iters=100)
    better = np.ones(m, bool) if best is None else c < cost
    best = p if best is None else np.where(better[:, None], p, best)
    cost = c if cost is None else np.where(better, c, cost)
  center = np.log(best[:, 2:3] * ymin[:, None] + np.exp(best[:, :1] - best[:, 1:2] * lx))
  rel_sem = None if sem is None else np.asarray(sem, float) / y.mean(axis=0)
  rng = np.random.default_rng(seed)
  log_star, _ = _draw_log_losses(rng, center, cost, points - POWER_LAW_PARAMS, n, rel_sem)
  log_star = log_star.reshape(m * n, points)
  p_star, _ = _fit_batch(lx, log_star, np.repeat(best, n, axis=0))
  q = (1 - level) / 2
  ci = np.quantile(p_star[:, 1].reshape(m, n), [q, 1 - q], axis=1).T
  return best[:, 1], ci


def _fit_batch(lx, ly, p, iters: int = 100):
  """Least squares of log L = log(frac * min L + exp(log_a - alpha lx)) for many data sets.

  ly: (B, n) log losses; p: (B, 3) starting (log_a, alpha, frac), bounded as fit_power_law's
  (0 <= alpha <= 5, 0 <= frac <= 0.999). Levenberg-Marquardt, projected onto the bounds, one
  damping factor per data set; a data set stops when a step gains < 1e-10 of its cost or its
  damping exceeds 1e8. Returns the parameters (B, 3) and the residual sums of squares.
  """
  lo, hi = np.array([-np.inf, 0.0, 0.0]), np.array([np.inf, 5.0, 0.999])
  ymin_all = np.exp(ly.min(axis=1))[:, None]

  def residuals(p, ly, ymin):
    u = np.exp(p[:, :1] - p[:, 1:2] * lx)
    m = p[:, 2:3] * ymin + u
    return np.log(m) - ly, u, m

  p = np.array(p, float)
  cost = np.sum(residuals(p, ly, ymin_all)[0] ** 2, axis=1)
  lam = np.full(len(p), 1e-3)
  active = np.arange(len(p))
  for _ in range(iters):
    if not len(active):
      break
    pa, ya, ymin = p[active], ly[active], ymin_all[active]
    r, u, m = residuals(pa, ya, ymin)
    jac = np.stack([u / m, -lx * u / m, np.broadcast_to(ymin, m.shape) / m], axis=-1)
    jtj = np.einsum('bni,bnj->bij', jac, jac)
    g = np.einsum('bni,bn->bi', jac, r)
    diag = np.maximum(np.diagonal(jtj, axis1=1, axis2=2), 1e-12)
    a = jtj + lam[active, None, None] * (np.eye(3) * diag[:, :, None])
    p_new = np.clip(pa - np.linalg.solve(a, g[..., None])[..., 0], lo, hi)
    c_new = np.sum(residuals(p_new, ya, ymin)[0] ** 2, axis=1)
    ok = c_new < cost[active]
    gain = np.where(ok, cost[active] - c_new, np.inf)
    p[active[ok]], cost[active[ok]] = p_new[ok], c_new[ok]
    lam[active] = np.where(ok, lam[active] / 3, lam[active] * 5)
    done = (gain <= 1e-10 * cost[active] + 1e-30) | (lam[active] > 1e8)
    active = active[~done]
  return p, cost


def _refit_batch(start: PowerLaw, x, log_y) -> list:
  """fit_power_law's least squares on each row of log_y, started from `start` (resamples are
  near it); the same parameters and bounds."""
  x = np.asarray(x, float)
  ymin = np.exp(log_y.min(axis=1))
  p0 = np.stack(
    [
      np.full(len(log_y), np.log(start.A)),
      np.full(len(log_y), start.alpha),
      np.minimum(start.E / ymin, 0.99),
    ],
    axis=1,
  )
  p, _ = _fit_batch(np.log(x), log_y, p0)
  return [
    PowerLaw(E=float(f * m), A=float(np.exp(la)), alpha=float(a), r2=0.0, n=len(x))
    for (la, a, f), m in zip(p, ymin, strict=True)
  ]


def loss_at(curve: dict, c: float) -> float | None:
  """A run's loss at compute c, interpolated linearly in (log C, log L); None outside it."""
  f, loss = np.asarray(curve.get('flops', [])), np.asarray(curve.get('loss', []))
  keep = f > 0
  f, loss = f[keep], loss[keep]
  if len(f) < 2 or not f.min() <= c <= f.max():
    return None
  return float(np.exp(np.interp(np.log(c), np.log(f), np.log(loss))))


def isoflop_from_curves(runs: list[Run], budgets: int = 8, kind: str = 'eval') -> IsoFlop:
  """IsoFLOP profiles read off the learning curves (Hoffmann et al.'s approaches 1 and 2 mixed).

  At each of `budgets` log-spaced compute values C reached by at least 4 runs, every such
  run's loss at C (interpolated on its eval curve) is a point of the profile L(log N) at C; a
  parabola through the (up to) five sizes around the lowest gives N_opt(C) when the lowest is
  not at an end of the sizes measured. Then
  N_opt ~ C^a. Caveat: a run read at C before its own last step has not finished its cosine
  decay, which favours smaller models at every C (Hoffmann et al., Sec. 3.1): read `a` as a
  lower estimate, and prefer a dedicated IsoFLOP sweep (experiments/sweeps/isoflop.py).
  """
  curves = [(r.n_nonembed, r.curve.get(kind, {})) for r in runs]
  curves = [(n, c) for n, c in curves if len(np.asarray(c.get('flops', [])))]
  if len(curves) < 4 or len({n for n, _ in curves}) < 3:
    raise ValueError('an IsoFLOP from curves needs >= 4 runs of >= 3 sizes with eval curves')
  lo = np.sort([np.asarray(c['flops'])[np.asarray(c['flops']) > 0].min() for _, c in curves])[3]
  hi = np.sort([np.asarray(c['flops']).max() for _, c in curves])[-4]
  if not lo < hi:
    raise ValueError('fewer than 4 runs share any compute range')
  profiles = {}
  for c in np.geomspace(lo, hi, budgets):
    pts = [(np.log10(n), loss_at(curve, c)) for n, curve in curves]
    pts = [(ln, v) for ln, v in pts if v is not None]
    if len(pts) < 4:
      continue
    ln, v = np.array(sorted(pts)).T
    best = int(np.argmin(v))
    if best in (0, len(v) - 1):
      continue  # the smallest loss at an end of the sizes: no minimum inside
    lo_i = max(0, min(best - 2, len(v) - 5))  # a parabola through the (up to) 5 nearest sizes
    profiles[float(c)] = (ln[lo_i : lo_i + 5], v[lo_i : lo_i + 5])
  return _isoflop_from_profiles(profiles, inside=True, what='compute values')


def jackknife_ci(runs: list, statistic, level: float = 0.95) -> tuple[float, float] | None:
  """Leave-one-run-out jackknife interval of statistic(runs) (None if < 3 leave-outs work)."""
  values = []
  for i in range(len(runs)):
    try:
      values.append(statistic(runs[:i] + runs[i + 1 :]))
    except (ValueError, RuntimeError, np.linalg.LinAlgError):
      continue
  if len(values) < 3:
    return None
  from scipy import stats

  v = np.asarray(values)
  m = len(v)
  se = float(np.sqrt((m - 1) / m * np.sum((v - v.mean()) ** 2)))
  center = float(statistic(runs))
  t = float(stats.t.ppf(0.5 + level / 2, m - 1))
  return center - t * se, center + t * se


RUN_COLUMNS = (
  'sweep',
  'name',
  'n_nonembed',
  'n_params',
  'tokens',
  'compute_flops',
  'final_eval_loss',
  'final_eval_loss_sem',
  'wall_time_s',
)
FIT_COLUMNS = ('sweep', 'fit', 'parameter', 'value', 'ci95_lo', 'ci95_hi', 'r2', 'points', 'note')


def run_rows(label: str, runs: list[Run]) -> list[dict]:
  """One CSV row per run: N, D, C = FLOPs per token x D, final loss +- SEM, wall time."""
  return [
    {
      'sweep': label,
      'name': r.name,
      'n_nonembed': r.n_nonembed,
      'n_params': r.n_params,
      'tokens': r.tokens,
      'compute_flops': f'{r.flops_per_token * r.tokens:.6g}',
      'final_eval_loss': f'{r.final_eval_loss:.6f}',
      'final_eval_loss_sem': f'{r.final_eval_loss_sem:.6f}',
      'wall_time_s': '' if r.wall_time_s is None else f'{r.wall_time_s:.1f}',
    }
    for r in sorted(runs, key=lambda r: r.n_nonembed)
  ]


def fit_rows(label: str, fit: str, params: dict, ci: dict, r2=None, points=None, note='') -> list:
  """One CSV row per fitted parameter."""
  rows = []
  for k, v in params.items():
    lo, hi = ci.get(k, (None, None)) if ci else (None, None)
    rows.append(
      {
        'sweep': label,
        'fit': fit,
        'parameter': k,
        'value': f'{v:.6g}',
        'ci95_lo': '' if lo is None else f'{lo:.6g}',
        'ci95_hi': '' if hi is None else f'{hi:.6g}',
        'r2': '' if r2 is None else f'{r2:.4f}',
        'points': points or '',
        'note': note,
      }
    )
  return rows


def write_csv(path: str, columns: tuple, rows: list[dict]) -> None:
  import csv

  with open(path, 'w', newline='') as f:
    w = csv.DictWriter(f, fieldnames=columns)
    w.writeheader()
    w.writerows(rows)


def format_ci(ci) -> str:
  return '' if ci is None else f' [{ci[0]:.3g}, {ci[1]:.3g}]'


def science_lines(r: dict) -> list[str]:
  """The fitted numbers with their 95% intervals, and N_opt ~ C^a beside the references."""
  lines = []
  pts = r.get('points') or {}
  lines += [f'  {note}' for note in pts.get('notes', [])]
  if 'law_note' in r:
    lines.append(f'  L(N): refused: {r["law_note"]}')
  if 'law' in r:
    law, ci = r['law'].law, r['law'].ci
    width = f' (+-{100 * r["law"].relative_halfwidth("alpha"):.0f}%)' if 'alpha' in ci else ''
    lines.append(
      f'  L(N) = E + A N^-alpha, 95% CI: E = {law.E:.3f}{format_ci(ci.get("E"))} nats, '
      f'A = {law.A:.3g}{format_ci(ci.get("A"))}, '
      f'alpha = {law.alpha:.3f}{format_ci(ci.get("alpha"))}{width}, R2 = {law.r2:.3f}'
    )
    if r['law'].note:
      lines.append(f'  L(N): {r["law"].note}')
    if r['law'].chi2_dof is not None:
      lines.append(
        f'  chi2/dof of L(N) against the seed variance: {r["law"].chi2_dof:.2f} '
        f'({r["law"].dof} dof; seed sd {pts["seed_sd"]:.4f} nats on {pts["seed_dof"]} dof)'
      )
  if 'extrapolation' in r:
    e = r['extrapolation']
    interval = f', 95% prediction interval {format_ci(e["interval"])}' if 'interval' in e else ''
    lines.append(
      f'  extrapolation to N={e["x"]:.3g}: predicted {e["predicted"]:.3f}{interval}, measured '
      f'{e["measured"]:.3f}, error {e["error_percent"]:+.2f}% of L, '
      f'{100 * e["error_fraction_of_reducible"]:+.0f}% of L - E: {e["verdict"].upper()}'
      + (f' ({e["why"]})' if 'why' in e else '')
    )
  if 'frontier_note' in r:
    lines.append(f'  frontier L(C): none ({r["frontier_note"]})')
  refs = ', '.join(f'{k} {v:.2f}' for k, v in REFERENCE_EXPONENTS.items())
  if 'iso_curves' in r:
    lines.append(
      f'  N_opt ~ C^a from the learning curves: a = {r["iso_curves"].exponent:.2f}'
      f'{format_ci(r.get("iso_curves_ci"))} (jackknife over runs; {refs})'
    )
  elif 'iso_curves_note' in r:
    lines.append(
      f'  N_opt ~ C^a from the learning curves: not measurable here ({r["iso_curves_note"]}; '
      f'{refs})'
    )
  return lines


def write_csvs(results: list[dict], stem: str) -> list[str]:
  """{stem}_runs.csv: every run; {stem}_fits.csv: every fitted parameter with its 95% CI."""
  runs, fits = [], []
  for r in results:
    label = r['label']
    runs += run_rows(label, r['runs'])
    if 'law' in r:
      law = r['law']
      fits += fit_rows(
        label,
        'L(N)=E+A*N^-alpha',
        law.law.params(),
        law.ci,
        law.law.r2,
        law.law.n,
        'parametric bootstrap',
      )
    if 'extrapolation' in r:
      e = r['extrapolation']
      nums = {k: v for k, v in e.items() if isinstance(v, float) and k != 'level'}
      ci = {'predicted': e['interval']} if 'interval' in e else {}
      note = f'fit without the largest model; verdict {e["verdict"]} {e.get("why", "")}'.strip()
      fits += fit_rows(label, 'extrapolation to the largest N', nums, ci, note=note)
    if 'frontier' in r:
      f = r['frontier']
      fits += fit_rows(label, 'L(C)=E+A*C^-alpha frontier', f.params(), {}, f.r2, f.n)
    if 'iso_curves' in r:
      i = r['iso_curves']
      refs = '; '.join(f'{k} {v}' for k, v in REFERENCE_EXPONENTS.items())
      params = {'a': i.exponent, 'k': i.coefficient}
      ci = {'a': r.get('iso_curves_ci')} if r.get('iso_curves_ci') else {}
      fits += fit_rows(
        label,
        'N_opt=k*C^a from curves',
        params,
        ci,
        points=len(i.budgets),
        note=f'jackknife over runs; {refs}',
      )
    if 'isoflop' in r:
      i = r['isoflop']
      params = {'a': i.exponent, 'k': i.coefficient}
      fits += fit_rows(label, 'N_opt=k*C^a IsoFLOP', params, {}, points=len(i.budgets))
  write_csv(f'{stem}_runs.csv', RUN_COLUMNS, runs)
  write_csv(f'{stem}_fits.csv', FIT_COLUMNS, fits)
  return [f'{stem}_runs.csv', f'{stem}_fits.csv']
