"""Compare the scaling curves of sweeps: python -m launch.compare DIR [DIR ...] --out=FILE.png

For each sweep directory: fit L(N) = E + A N^-alpha over final eval losses (with bootstrap
95% bands), check the fit by extrapolating to the largest model, fit the compute frontier
L(C), and (where the runs allow) Chinchilla's L(N, D) and IsoFLOP optima. Writes
  FILE.png          all sweeps on one log-log plot, points, fitted lines, bands;
  FILE_curves.png   every run's eval loss against training FLOPs, one panel per sweep;
  FILE_isoflop.png  IsoFLOP parabolas (sweeps with tags.budget_flops);
  FILE.json         every fitted number;
and prints a table of the fits.
"""

import json
import os
import sys

import numpy as np
from absl import app, flags

from experiments import scaling

_OUT = flags.DEFINE_string('out', 'scaling.png', 'Output PNG; siblings get _curves/_isoflop.')
_X = flags.DEFINE_enum('x', 'nonembed', ['nonembed', 'total'], 'Parameter count for L(N).')
_BOOT = flags.DEFINE_integer('bootstrap', 200, 'Bootstrap resamples for the confidence bands.')


def analyze(sweep_dir: str, x_kind: str, n_boot: int) -> dict:
  runs, unfinished = scaling.load_sweep(sweep_dir)
  if not runs:
    raise ValueError(f'{sweep_dir} has no finished runs (runs/*/summary.json)')
  n = np.array([r.n_nonembed if x_kind == 'nonembed' else r.n_params for r in runs], float)
  loss = np.array([r.final_eval_loss for r in runs])
  out = {'label': os.path.basename(os.path.normpath(sweep_dir)), 'runs': runs,
         'unfinished': unfinished, 'n': n, 'loss': loss}  # fmt: skip
  distinct_n = len(np.unique(n))
  if distinct_n >= 3:
    # Several runs per size (token budgets, IsoFLOP): the size law uses each size's best.
    sizes = np.unique(n)
    best = np.array([loss[n == s].min() for s in sizes])
    fit = scaling.fit_power_law(sizes, best)
    out['fit'] = fit
    out['fit_points'] = (sizes, best)
    out['ci'] = scaling.bootstrap(scaling.fit_power_law, (sizes, best), n=n_boot)
    if distinct_n >= 4:
      out['extrapolation'] = scaling.extrapolation_check(sizes, best)
    sems = np.array([r.final_eval_loss_sem for r in runs])
    sem = np.array([sems[n == s][np.argmin(loss[n == s])] for s in sizes])
    out['law'] = scaling.fit_power_law_ci(sizes, best, sem, n=max(n_boot, 50))
  try:
    out['iso_curves'] = scaling.isoflop_from_curves(runs)
    out['iso_curves_ci'] = scaling.jackknife_ci(
      runs, lambda rs: scaling.isoflop_from_curves(rs).exponent
    )
  except ValueError:
    pass
  try:
    out['frontier'] = scaling.fit_compute_frontier(runs)
  except ValueError:
    pass
  tokens = np.array([r.tokens for r in runs], float)
  if len(np.unique(tokens)) >= 2 and distinct_n >= 2 and len(runs) >= 6:
    out['chinchilla'] = scaling.fit_chinchilla(n, tokens, loss)
  try:
    out['isoflop'] = scaling.fit_isoflop(runs)
  except ValueError:
    pass
  return out


def _band(res, xs):
  """Pointwise 95% band of L(x) over bootstrap refits."""
  sizes, best = res['fit_points']
  rng = np.random.default_rng(0)
  curves = []
  for _ in range(100):
    idx = rng.integers(0, len(sizes), len(sizes))
    if len(np.unique(sizes[idx])) < 3:
      continue
    try:
      curves.append(scaling.fit_power_law(sizes[idx], best[idx]).predict(xs))
    except (ValueError, RuntimeError):
      continue
  if len(curves) < 10:
    return None
  return np.percentile(curves, 2.5, axis=0), np.percentile(curves, 97.5, axis=0)


def plot(results: list[dict], out: str, x_kind: str) -> list[str]:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  stem, _ = os.path.splitext(out)
  written = []
  fig, ax = plt.subplots(figsize=(7, 5))
  for i, res in enumerate(results):
    color = f'C{i}'
    ax.scatter(res['n'], res['loss'], color=color, s=18, alpha=0.7)
    if 'fit' in res:
      fit = res['fit']
      xs = np.logspace(np.log10(res['n'].min()) - 0.2, np.log10(res['n'].max()) + 0.5, 100)
      band = _band(res, xs)
      if band is not None:
        ax.fill_between(xs, *band, color=color, alpha=0.15)
      label = f'{res["label"]}: L = {fit.E:.3g} + {fit.A:.3g} N^-{fit.alpha:.3f} (R² {fit.r2:.3f})'
      ax.plot(xs, fit.predict(xs), color=color, label=label)
    else:
      ax.plot([], [], color=color, label=res['label'])
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xlabel(f'{"non-embedding" if x_kind == "nonembed" else "total"} parameters N')
  ax.set_ylabel('final eval loss (nats/token)')
  ax.legend(fontsize=8)
  ax.grid(True, which='both', alpha=0.3)
  fig.tight_layout()
  fig.savefig(out, dpi=120)
  plt.close(fig)
  written.append(out)

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
        ax.plot(c['flops'], c['loss'], color=cmap(j / max(len(order) - 1, 1)),
                label=f'{run.name} ({res["n"][k]:.2g})')  # fmt: skip
    if 'frontier' in res:
      f = res['frontier']
      flops = np.concatenate(
        [r.curve.get('eval', {}).get('flops', np.zeros(0)) for r in res['runs']]
      )
      flops = flops[flops > 0]
      cs = np.logspace(np.log10(flops.min()), np.log10(flops.max()), 50)
      ax.plot(cs, f.predict(cs), 'k--', label=f'frontier L(C): C^-{f.alpha:.3f}')
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('training FLOPs')
    ax.set_ylabel('eval loss')
    ax.set_title(res['label'])
    ax.legend(fontsize=6)
    ax.grid(True, which='both', alpha=0.3)
  fig.tight_layout()
  fig.savefig(f'{stem}_curves.png', dpi=110)
  plt.close(fig)
  written.append(f'{stem}_curves.png')

  nopt = [r for r in results if 'iso_curves' in r]
  if nopt:
    written.append(plot_nopt(nopt, f'{stem}_nopt.png'))

  iso = [r for r in results if 'isoflop' in r]
  if iso:
    fig, ax = plt.subplots(figsize=(7, 5))
    for res in iso:
      f = res['isoflop']
      for c, poly, n_opt in zip(f.budgets, f.parabolas, f.n_opt, strict=True):
        pts = [r for r in res['runs'] if float(r.tags.get('budget_flops') or 0) == c]
        ln = np.log10([r.n_nonembed for r in pts])
        line = ax.scatter(10**ln, [r.final_eval_loss for r in pts], s=15)
        xs = np.linspace(ln.min(), ln.max(), 50)
        ax.plot(10**xs, poly(xs), color=line.get_facecolor()[0], label=f'C={c:.2g}')
        ax.axvline(n_opt, color=line.get_facecolor()[0], ls=':', lw=0.8)
    ax.set_xscale('log')
    ax.set_xlabel('non-embedding parameters')
    ax.set_ylabel('final eval loss')
    ax.set_title(f'IsoFLOP: N_opt ~ C^{iso[0]["isoflop"].exponent:.2f}')
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(f'{stem}_isoflop.png', dpi=110)
    plt.close(fig)
    written.append(f'{stem}_isoflop.png')
  return written


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
      label=f'{res["label"]}: a = {f.exponent:.2f}{_ci(res.get("iso_curves_ci"))}',
    )
    c0 = np.exp(np.mean(np.log(f.budgets)))
    n0 = f.coefficient * c0**f.exponent
    for (name, a), ls in zip(scaling.REFERENCE_EXPONENTS.items(), (':', '--'), strict=True):
      ax.plot(cs, n0 * (cs / c0) ** a, 'k', ls=ls, lw=0.8, label=f'{name}: a = {a:.2f}')
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xlabel('training FLOPs C')
  ax.set_ylabel('N_opt (non-embedding parameters)')
  ax.set_title('N_opt ~ C^a, from the learning curves')
  ax.legend(fontsize=7)
  ax.grid(True, which='both', alpha=0.3)
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)
  return out


def table(results: list[dict]) -> str:
  head = (f'{"sweep":<18}{"runs":>5}  {"alpha [95% CI]":<24}{"E":>8}{"A":>10}{"R²":>8}'
          f'{"extrap.%":>10}{"frontier":>10}')  # fmt: skip
  lines = [head, '-' * len(head)]
  for r in results:
    fit, ci = r.get('fit'), r.get('ci', {})
    alpha = (f'{fit.alpha:.3f} [{ci["alpha"][0]:.3f}, {ci["alpha"][1]:.3f}]'
             if fit and 'alpha' in ci else (f'{fit.alpha:.3f}' if fit else '-'))  # fmt: skip
    ext, front = r.get('extrapolation'), r.get('frontier')

    def num(value, spec):
      return '-' if value is None else format(value, spec)

    lines.append(
      f'{r["label"]:<18}{len(r["runs"]):>5}  {alpha:<24}'
      f'{num(fit and fit.E, ".3f"):>8}{num(fit and fit.A, ".3g"):>10}'
      f'{num(fit and fit.r2, ".3f"):>8}{num(ext and ext["error_percent"], "+.2f"):>10}'
      f'{num(front and front.alpha, ".3f"):>10}'
    )
    if 'chinchilla' in r:
      c = r['chinchilla']
      lines.append(f'  Chinchilla: E={c.E:.3f} A={c.A:.4g} B={c.B:.4g} alpha={c.alpha:.3f} '
                   f'beta={c.beta:.3f}')  # fmt: skip
    if 'isoflop' in r:
      lines.append(f'  IsoFLOP: N_opt ~ C^{r["isoflop"].exponent:.3f}')
    lines.extend(science_lines(r))
    if r['unfinished']:
      lines.append(f'  unfinished (not fitted): {", ".join(r["unfinished"])}')
  return '\n'.join(lines)


def _ci(ci) -> str:
  return '' if ci is None else f' [{ci[0]:.3g}, {ci[1]:.3g}]'


def science_lines(r: dict) -> list[str]:
  """The fitted numbers with their 95% intervals, and N_opt ~ C^a beside the references."""
  lines = []
  if 'law' in r:
    law, ci = r['law'].law, r['law'].ci
    lines.append(
      f'  L(N) = E + A N^-alpha, 95% CI: E = {law.E:.3f}{_ci(ci.get("E"))} nats, '
      f'A = {law.A:.3g}{_ci(ci.get("A"))}, alpha = {law.alpha:.3f}{_ci(ci.get("alpha"))} '
      f'(+-{100 * r["law"].relative_halfwidth("alpha"):.0f}%), R2 = {law.r2:.3f}'
    )
  if 'iso_curves' in r:
    refs = ', '.join(f'{k} {v:.2f}' for k, v in scaling.REFERENCE_EXPONENTS.items())
    lines.append(
      f'  N_opt ~ C^a from the learning curves: a = {r["iso_curves"].exponent:.2f}'
      f'{_ci(r.get("iso_curves_ci"))} (jackknife over runs; {refs})'
    )
  return lines


def write_csvs(results: list[dict], dirs: list[str], stem: str) -> list[str]:
  """{stem}_runs.csv: every run; {stem}_fits.csv: every fitted parameter with its 95% CI."""
  runs, fits = [], []
  for r, d in zip(results, dirs, strict=True):
    label = r['label']
    runs += scaling.run_rows(label, r['runs'], scaling.run_wall_times(d))
    if 'law' in r:
      law = r['law']
      fits += scaling.fit_rows(
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
      fits += scaling.fit_rows(
        label, 'extrapolation to the largest N', e, {}, note='fit without the largest model'
      )
    if 'frontier' in r:
      f = r['frontier']
      fits += scaling.fit_rows(label, 'L(C)=E+A*C^-alpha frontier', f.params(), {}, f.r2, f.n)
    if 'iso_curves' in r:
      i = r['iso_curves']
      refs = '; '.join(f'{k} {v}' for k, v in scaling.REFERENCE_EXPONENTS.items())
      params = {'a': i.exponent, 'k': i.coefficient}
      ci = {'a': r.get('iso_curves_ci')} if r.get('iso_curves_ci') else {}
      fits += scaling.fit_rows(
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
      fits += scaling.fit_rows(label, 'N_opt=k*C^a IsoFLOP', params, {}, points=len(i.budgets))
  scaling.write_csv(f'{stem}_runs.csv', scaling.RUN_COLUMNS, runs)
  scaling.write_csv(f'{stem}_fits.csv', scaling.FIT_COLUMNS, fits)
  return [f'{stem}_runs.csv', f'{stem}_fits.csv']


def to_json(results: list[dict]) -> dict:
  out = {}
  for r in results:
    d = {'runs': [{'name': run.name, 'n_nonembed': run.n_nonembed, 'n_params': run.n_params,
                   'tokens': run.tokens, 'final_eval_loss': run.final_eval_loss,
                   'final_eval_loss_sem': run.final_eval_loss_sem} for run in r['runs']],
         'unfinished': r['unfinished']}  # fmt: skip
    if 'fit' in r:
      d['power_law'] = {**r['fit'].params(), 'r2': r['fit'].r2, 'ci95': r['ci']}
    if 'law' in r:
      d['power_law'].update(ci95=r['law'].ci, ci95_method='parametric bootstrap')
    if 'iso_curves' in r:
      i = r['iso_curves']
      d['nopt_from_curves'] = {
        'budgets': i.budgets.tolist(),
        'n_opt': i.n_opt.tolist(),
        'exponent': i.exponent,
        'ci95': r.get('iso_curves_ci'),
        'references': scaling.REFERENCE_EXPONENTS,
      }
    for key in ('extrapolation',):
      if key in r:
        d[key] = r[key]
    if 'frontier' in r:
      d['compute_frontier'] = {**r['frontier'].params(), 'r2': r['frontier'].r2}
    if 'chinchilla' in r:
      d['chinchilla'] = r['chinchilla'].params()
    if 'isoflop' in r:
      f = r['isoflop']
      d['isoflop'] = {'budgets': f.budgets.tolist(), 'n_opt': f.n_opt.tolist(),
                      'exponent': f.exponent}  # fmt: skip
    out[r['label']] = d
  return out


def main(argv: list[str]) -> None:
  dirs = argv[1:]
  if not dirs:
    raise app.UsageError('give one or more sweep directories')
  try:
    results = [analyze(d, _X.value, _BOOT.value) for d in dirs]
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  written = plot(results, _OUT.value, _X.value)
  stem, _ = os.path.splitext(_OUT.value)
  with open(f'{stem}.json', 'w') as f:
    json.dump(to_json(results), f, indent=2)
  written += write_csvs(results, dirs, stem)
  print(table(results))
  print('wrote ' + ', '.join(written + [f'{stem}.json']))


if __name__ == '__main__':
  app.run(main)
