"""What the sweep runner prints and records: the end-of-sweep table, dry runs, sweep.json."""

import shlex
from collections.abc import Mapping, Sequence

from core import rundir
from experiments.sweep_spec import REPO_ROOT, Run
from launch.pool import FAILED, PENDING, SKIPPED
from launch.shell import TRAIN_CMD


def _read_summary(run: rundir.RunDir) -> rundir.Summary:
  """The run's summary; an empty one (every field None) if it has none or it is unreadable."""
  try:
    return run.read_summary() or rundir.Summary()
  except (OSError, ValueError, TypeError):
    return rundir.Summary()


def table_rows(runs: Sequence[Run], workdir: str, status: Mapping[str, dict]) -> list[dict]:
  """One row per run: name, status, devices, N non-emb, final train/eval loss, wall time."""
  rows = []
  for run in runs:
    st = status.get(run.name, {'status': PENDING})
    summary = _read_summary(rundir.SweepDir(workdir).run(run.name))
    wall = st.get('wall_time_s')
    if st['status'] == SKIPPED:
      wall = summary.wall_time_s
    rows.append(
      {
        'name': run.name,
        'status': st['status'],
        'devices': st.get('devices'),
        'n_nonembed': summary.n_params_nonembed,
        'train_loss': summary.final_train_loss,
        'eval_loss': summary.final_eval_loss,
        'eval_sem': summary.final_eval_loss_sem,
        'wall_time_s': wall,
        'last_line': st.get('last_line', ''),
      }
    )
  return rows


def format_table(rows: Sequence[dict]) -> str:
  """The end-of-sweep table (wall time: this invocation's, or the recorded one if skipped).

  A `devices` column appears when runs were given device subsets (--devices_per_run).
  """

  def num(x, fmt):
    return '-' if x is None else format(x, fmt)

  with_devices = any(r.get('devices') for r in rows)
  header = ('run', 'status', 'N non-emb', 'train loss', 'eval loss ± sem', 'wall s')
  if with_devices:
    header = header[:2] + ('devices',) + header[2:]
  body = []
  for r in rows:
    ev = num(r['eval_loss'], '.4f')
    if r['eval_loss'] is not None and r['eval_sem'] is not None:
      ev += f' ± {r["eval_sem"]:.4f}'
    row = [r['name'], r['status'], num(r['n_nonembed'], ','), num(r['train_loss'], '.4f'), ev]
    row.append(num(r['wall_time_s'], '.0f'))
    if with_devices:
      row.insert(2, r.get('devices') or '-')
    body.append(row)
  widths = [max(len(str(c)) for c in col) for col in zip(header, *body, strict=True)]
  lines = [
    '  '.join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
    for row in (header, *body)
  ]
  lines.insert(1, '  '.join('-' * w for w in widths))
  for r in rows:
    if r['status'] == FAILED:
      lines.append(f'{r["name"]} failed: {r["last_line"]}')
  return '\n'.join(lines)


def dry_run_text(runs: Sequence[Run], workdir: str, train_cmd: Sequence[str] = TRAIN_CMD) -> str:
  out = []
  for run in runs:
    rdir = rundir.SweepDir(workdir).run(run.name)
    state = 'finished, would skip' if rdir.done() else 'to run'
    out.append(f'{run.name} ({state})')
    out.extend(f'  {k} = {v!r}' for k, v in run.overrides.items())
    out.append('  $ ' + shlex.join(run.argv(rdir.path, train_cmd)))
  out.append(
    f'{len(runs)} runs (dry run: nothing started, nothing written; commands run from {REPO_ROOT})'
  )
  return '\n'.join(out)


def sweep_records(runs: Sequence[Run], sweep_file: str) -> list[dict]:
  """The records of DIR/sweep.json: [{'name', 'overrides', 'config', 'sweep'}]."""
  return [
    {'name': r.name, 'overrides': r.overrides, 'config': r.config, 'sweep': sweep_file}
    for r in runs
  ]


def write_sweep_json(runs: Sequence[Run], workdir: str, sweep_file: str) -> None:
  """DIR/sweep.json, every run of the sweep (rewritten whole: each writer's own temp file)."""
  rundir.SweepDir(workdir).write_sweep(sweep_records(runs, sweep_file))
