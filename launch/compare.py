"""Compare the scaling curves of sweeps: python -m launch.compare DIR [DIR ...] --out=FILE.png

For each sweep directory (or, with --merge, all of them as one), and in it for each tags.group:
fit L(N) = E + A N^-alpha over each size's seed-mean loss (with bootstrap 95% bands; refused
over less than half a decade of N), check the fit by extrapolating to the largest model (a
95% prediction interval and a verdict), fit the compute frontier L(C) where a law matches
it, and (where the runs allow) Chinchilla's L(N, D) and IsoFLOP optima. Writes
  FILE.png          all sweeps on one log-log plot, points, fitted lines, bands;
  FILE_curves.png   every run's eval loss against training FLOPs, one panel per sweep;
  FILE_isoflop.png  IsoFLOP parabolas (sweeps with tags.budget_flops);
  FILE.json         every fitted number;
and prints a table of the fits. The analysis (fits, bootstrap, table, JSON) is
experiments/scaling.py's; this module is the command line and the drawing.
"""

import json
import os
import sys
import tempfile

import numpy as np
from absl import app, flags

from experiments import scaling

_OUT = flags.DEFINE_string('out', 'scaling.png', 'Output PNG; siblings get _curves/_isoflop.')
_X = flags.DEFINE_enum('x', 'nonembed', ['nonembed', 'total'], 'Parameter count for L(N).')
_BOOT = flags.DEFINE_integer('bootstrap', 200, 'Bootstrap resamples for the confidence bands.')
_L2L = flags.DEFINE_list(
  'loss_to_loss',
  [],
  "X,Y: instead of the fits, plot each run's loss on eval label Y against label X (the "
  'RUN/eval_<label>.json files of launch.eval) with a fitted log-log line.',
)
_MERGE = flags.DEFINE_bool('merge', False, 'Analyze the runs of all directories as one set.')


def _log_axes(ax, xlabel: str, ylabel: str, title: str = '', legend_size: int = 7) -> None:
  """Log axes whose ticks read as numbers (2.2, 1e+06), not as 2 x 10^0."""
  from matplotlib import ticker

  ax.set_xscale('log')
  ax.set_yscale('log')
  plain = ticker.FuncFormatter(lambda v, _: f'{v:.3g}')
  for axis in (ax.xaxis, ax.yaxis):
    lo, hi = axis.get_view_interval()
    axis.set_major_formatter(plain)
    # a span under a decade has few major ticks: label the minor ones too
    short = lo > 0 and hi / lo < 10
    axis.set_minor_formatter(plain if short else ticker.NullFormatter())
  ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
  ax.legend(fontsize=legend_size)
  ax.grid(True, which='both', alpha=0.3)


def _save(fig, path: str, dpi: int = 110) -> str:
  import matplotlib.pyplot as plt

  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)
  return path


def plot(results: list[dict], out: str, x_kind: str) -> list[str]:
  """Every figure the results allow: the size law (`out`), the learning curves, N_opt(C) and
  the IsoFLOP parabolas (siblings of `out`)."""
  import matplotlib

  matplotlib.use('Agg')
  stem, _ = os.path.splitext(out)
  written = [plot_law(results, out, x_kind), plot_curves(results, f'{stem}_curves.png')]
  nopt = [r for r in results if 'iso_curves' in r]
  if nopt:
    written.append(plot_nopt(nopt, f'{stem}_nopt.png'))
  iso = [r for r in results if 'isoflop' in r]
  if iso:
    written.append(plot_isoflop(iso, f'{stem}_isoflop.png'))
  return written


def plot_law(results: list[dict], out: str, x_kind: str) -> str:
  """Final loss against N, every sweep on one log-log plot: points, fitted law, bootstrap band."""
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 5))
  for i, res in enumerate(results):
    color = f'C{i}'
    ax.scatter(res['n'], res['loss'], color=color, s=8, alpha=0.3)  # every run
    pts = res['points']
    if len(pts['n']):  # the fitted points: +- SEM, and the seed sd where there are seeds
      ax.errorbar(pts['n'], pts['loss'], yerr=pts['sem'], fmt='o', ms=4, color=color, capsize=3)
      if pts['seed_sd'] is not None:
        ax.errorbar(
          pts['n'], pts['loss'], yerr=pts['seed_sd'], fmt='none', color=color, lw=4, alpha=0.35
        )
    if 'fit' in res:
      fit = res['fit']
      xs = np.logspace(np.log10(res['n'].min()) - 0.2, np.log10(res['n'].max()) + 0.5, 100)
      band = scaling.band(res['boot_fits'], xs)
      if band is not None:
        ax.fill_between(xs, *band, color=color, alpha=0.15)
      label = f'{res["label"]}: L = {fit.E:.3g} + {fit.A:.3g} N^-{fit.alpha:.3f} (R² {fit.r2:.3f})'
      ax.plot(xs, fit.predict(xs), color=color, label=label)
    else:
      ax.plot([], [], color=color, label=f'{res["label"]}: no fit ({res.get("law_note", "")})')
  which = 'non-embedding' if x_kind == 'nonembed' else 'total'
  _log_axes(ax, f'{which} parameters N', 'final eval loss (nats/token)')
  return _save(fig, out, dpi=120)


def plot_curves(results: list[dict], out: str) -> str:
  """Every run's eval loss against training FLOPs, one panel per sweep, with its frontier."""
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
  for ax, res in zip(axes[0], results, strict=True):
    cmap = plt.get_cmap('viridis')
    order = np.argsort(res['n'])
    for j, k in enumerate(order):
      run = res['runs'][k]
      c = run.curve.get('eval') or {}
      if len(c.get('flops', [])) == 0:
        c = run.curve.get('train') or {}
      if len(c.get('flops', [])):
        color = cmap(j / max(len(order) - 1, 1))
        ax.plot(c['flops'], c['loss'], color=color, label=f'{run.name} ({res["n"][k]:.2g})')
    try:
      c, loss, _ = scaling.compute_frontier(res['runs'])
    except ValueError:
      c = None
    if c is not None:
      ax.plot(c, loss, 'k.', ms=5, label='frontier: best loss so far, at its own C')
      if 'frontier' in res:
        f = res['frontier']
        cs = np.geomspace(c.min(), c.max(), 50)
        ax.plot(cs, f.predict(cs), 'k--', label=f'L(C) = {f.E:.3g} + {f.A:.3g} C^-{f.alpha:.3f}')
      else:
        ax.plot([], [], ' ', label='no law matches the frontier')
    _log_axes(ax, 'training FLOPs', 'eval loss', res['label'], legend_size=6)
  return _save(fig, out)


def plot_isoflop(results: list[dict], out: str) -> str:
  """IsoFLOP parabolas (sweeps with tags.budget_flops) and the N_opt of each budget."""
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(7, 5))
  for res in results:
    f = res['isoflop']
    for c, poly, n_opt in zip(f.budgets, f.parabolas, f.n_opt, strict=True):
      pts = [r for r in res['runs'] if float(r.tags.get('budget_flops') or 0) == c]
      ln = np.log10([r.n_nonembed for r in pts])
      line = ax.scatter(10**ln, [r.final_eval_loss for r in pts], s=15)
      xs = np.linspace(ln.min(), ln.max(), 50)
      ax.plot(10**xs, poly(xs), color=line.get_facecolor()[0], label=f'C={c:.2g}')
      ax.axvline(n_opt, color=line.get_facecolor()[0], ls=':', lw=0.8)
  title = f'IsoFLOP: N_opt ~ C^{results[0]["isoflop"].exponent:.2f}'
  _log_axes(ax, 'non-embedding parameters', 'final eval loss', title)
  return _save(fig, out)


def plot_nopt(results: list[dict], out: str) -> str:
  """N_opt(C) read off the learning curves, its fit, and the published exponents through it."""
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 4.5))
  for i, res in enumerate(results):
    f = res['iso_curves']
    ax.scatter(f.budgets, f.n_opt, color=f'C{i}', s=18)
    cs = np.geomspace(f.budgets.min() / 2, f.budgets.max() * 2, 20)
    ax.plot(
      cs,
      f.coefficient * cs**f.exponent,
      color=f'C{i}',
      label=f'{res["label"]}: a = {f.exponent:.2f}{scaling.format_ci(res.get("iso_curves_ci"))}',
    )
    c0 = np.exp(np.mean(np.log(f.budgets)))
    n0 = f.coefficient * c0**f.exponent
    for (name, a), ls in zip(scaling.REFERENCE_EXPONENTS.items(), (':', '--'), strict=True):
      ax.plot(cs, n0 * (cs / c0) ** a, 'k', ls=ls, lw=0.8, label=f'{name}: a = {a:.2f}')
  title = 'N_opt ~ C^a, from the learning curves'
  _log_axes(ax, 'training FLOPs C', 'N_opt (non-embedding parameters)', title)
  return _save(fig, out)


def compare(
  dirs: list[str],
  out: str,
  x_kind: str = 'nonembed',
  n_boot: int = 200,
  echo=print,
  warn=None,
  merge: bool = False,
) -> int:
  """The whole command: analyze, draw, write the JSON, print the table; returns the exit status.

  A run that cannot be read (a summary missing a key, a corrupt metrics.jsonl) is named in one
  line on stderr and left out; the other runs are still compared.
  """
  warn = warn or (lambda line: print(f'skipped: {line}', file=sys.stderr))
  try:
    results = scaling.analyze(dirs, x_kind, n_boot, on_bad=warn, merge=merge)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  written = plot(results, out, x_kind)
  stem, _ = os.path.splitext(out)
  with open(f'{stem}.json', 'w') as f:
    json.dump(scaling.fits_json(results), f, indent=2)
  written += scaling.write_csvs(results, stem)
  echo(scaling.fits_table(results))
  echo('wrote ' + ', '.join(written + [f'{stem}.json']))
  return 0


def loss_to_loss(dirs: list[str], labels: list[str], out: str, n_boot: int, echo=print) -> int:
  """Loss on one corpus against loss on another across sweeps (Brandfonbrener et al. 2024):
  every run with both eval JSONs is a point; log L_Y = kappa log L_X + c is fitted over all of
  them, kappa with a bootstrap 95% interval over runs. Writes `out` and its .json."""
  from core import files, rundir

  if len(labels) != 2:
    print(f'error: --loss_to_loss takes two eval labels X,Y, got {labels}', file=sys.stderr)
    return 2
  points = []  # (sweep, run, loss X, loss Y)
  for d in dirs:
    sweep = rundir.SweepDir(d)
    for run in sweep.run_names():
      paths = [sweep.run(run).eval_path(label) for label in labels]
      if all(files.exists(p) for p in paths):
        x, y = (json.loads(files.read_text(p))['eval_loss'] for p in paths)
        points.append((d, run, x, y))
  if len(points) < 3:
    print(
      f'error: {len(points)} runs under {dirs} have both eval_{labels[0]}.json and '
      f'eval_{labels[1]}.json; a fit needs 3 (python -m launch.eval --label=...)',
      file=sys.stderr,
    )
    return 2
  lx, ly = np.log([p[2] for p in points]), np.log([p[3] for p in points])
  kappa, c = np.polyfit(lx, ly, 1)
  rng = np.random.default_rng(0)
  boot = [np.polyfit(lx[i], ly[i], 1)[0] for i in rng.integers(0, len(lx), (n_boot, len(lx)))]
  boot = [k for k in boot if np.isfinite(k)]
  lo, hi = np.percentile(boot, [2.5, 97.5]) if boot else (float('nan'),) * 2
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5, 4))
  for d in dirs:
    mine = [p for p in points if p[0] == d]
    if mine:
      ax.plot([p[2] for p in mine], [p[3] for p in mine], 'o', label=os.path.basename(d))
  xs = np.exp(np.linspace(lx.min(), lx.max(), 50))
  line = f'kappa = {kappa:.3f} [{lo:.3f}, {hi:.3f}]'
  ax.plot(xs, np.exp(c) * xs**kappa, 'k--', lw=0.8, label=line)
  _log_axes(ax, f'eval loss on {labels[0]}', f'eval loss on {labels[1]}', 'loss to loss')
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  _save(fig, out)
  stem, _ = os.path.splitext(out)
  record = {
    'x': labels[0],
    'y': labels[1],
    'kappa': kappa,
    'kappa_95': [lo, hi],
    'log_c': c,
    'runs': [{'sweep': p[0], 'run': p[1], 'loss_x': p[2], 'loss_y': p[3]} for p in points],
  }
  with open(f'{stem}.json', 'w') as f:
    json.dump(record, f, indent=2)
  echo(f'{len(points)} runs: log L_{labels[1]} = {kappa:.3f} log L_{labels[0]} + {c:.3f}; '
       f'kappa 95% [{lo:.3f}, {hi:.3f}]; wrote {out}, {stem}.json')  # fmt: skip
  return 0


def main(argv: list[str]) -> None:
  dirs = argv[1:]
  if not dirs:
    raise app.UsageError('give one or more sweep directories')
  if _BOOT.value < 0:
    raise app.UsageError(f'--bootstrap={_BOOT.value} must be >= 0')
  folder = os.path.dirname(os.path.abspath(_OUT.value))
  while not os.path.exists(folder):  # the nearest existing folder must take a new file
    folder = os.path.dirname(folder)
  try:
    tempfile.TemporaryFile(dir=folder).close()
  except OSError as e:
    sys.exit(
      print(f'error: --out={_OUT.value} cannot be written ({e.strerror})', file=sys.stderr) or 2
    )
  if _L2L.value:
    sys.exit(loss_to_loss(dirs, _L2L.value, _OUT.value, _BOOT.value))
  sys.exit(compare(dirs, _OUT.value, _X.value, _BOOT.value, merge=_MERGE.value))


if __name__ == '__main__':
  app.run(main)
