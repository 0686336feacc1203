"""The rows of benchmarks/RESULTS.md from the JSON lines that benchmarks.train_step writes.

  python -m benchmarks.report table runs/gpu_check/rows.jsonl
  python -m benchmarks.report failure runs/gpu_check/rows.jsonl --label=L --rc=124 \
      --timeout=90 --log=row.log -- --shapes=gpt3.Medium ...

`failure` records a run that produced no row (timed out, out of memory, crashed) as a row
with an 'error', so that the table shows it. `table` prints one markdown row per run and one
per PyTorch reference measured; the ratio is tokens/s over the reference's tokens/s on the
same shape, batch, sequence length, vocabulary and dtype (measured in any row of the file).
"""

import argparse
import json
import re
import sys
import time

COLUMNS = (
  'run',
  'machine',
  'command',
  'date',
  'tokens/s',
  'MFU',
  'peak memory',
  'compile',
  'ratio to reference',
)
_SHAPE_KEYS = ('d_model', 'layers', 'heads', 'seq_len', 'batch', 'vocab', 'dtype')
_HIDDEN_FLAGS = re.compile(r'\s--(?:out|label)=("[^"]*"|\S+)')


def read_rows(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def _key(row: dict) -> tuple | None:
  if not all(k in row for k in _SHAPE_KEYS):
    return None
  return tuple(row[k] for k in _SHAPE_KEYS)


def _num(value, fmt: str) -> str:
  return format(value, fmt) if isinstance(value, int | float) else '—'


def _machine(row: dict) -> str:
  if 'device' not in row:
    return '—'
  return f'{row.get("num_devices", 1)}× {row["device"]}, jax {row.get("jax_version", "?")}'


def _command(row: dict) -> str:
  return '`' + _HIDDEN_FLAGS.sub('', row.get('command', '')).strip() + '`'


def table(rows: list[dict]) -> str:
  """Markdown: a header and one line per run (and per reference measured)."""
  refs = {}
  for row in rows:
    if isinstance(row.get('torch_tokens_per_s'), float) and _key(row):
      refs.setdefault(_key(row), row)
  out = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
  seen_refs = set()
  for row in rows:
    label = row.get('label') or row.get('shape', '?')
    if 'error' in row:
      cells = [label, '—', _command(row), row.get('date', '—'), row['error']] + ['—'] * 4
      out.append('| ' + ' | '.join(cells) + ' |')
      continue
    ref = refs.get(_key(row))
    if row.get('torch_only'):  # the reference in its own process: only its own line
      if ref is not row:
        cells = [f'PyTorch reference for {label}', '—', _command(row), '—', row.get('torch', '—')]
        out.append('| ' + ' | '.join(cells + ['—'] * 4) + ' |')
        continue
    ratio = '—'
    if ref and isinstance(row.get('tokens_per_s'), float):
      ratio = f'{row["tokens_per_s"] / ref["torch_tokens_per_s"]:.2f}×'
    mem = _num(row.get('peak_memory_gb'), '.1f')
    cells = [
      label,
      _machine(row),
      _command(row),
      row.get('date', '—'),
      _num(row.get('tokens_per_s'), ',.0f'),
      _num(row.get('mfu'), '.1%'),
      mem + (' GB' if mem != '—' else ''),
      _num(row.get('compile_s'), '.1f') + (' s' if 'compile_s' in row else ''),
      ratio,
    ]
    if not row.get('torch_only'):
      out.append('| ' + ' | '.join(cells) + ' |')
    if row.get('torch') and 'torch_tokens_per_s' not in row:
      cells = [f'PyTorch reference for {label}', '—', _command(row), '—', row['torch']]
      out.append('| ' + ' | '.join(cells + ['—'] * 4) + ' |')
    if ref is row and _key(row) not in seen_refs:
      seen_refs.add(_key(row))
      tmem = _num(row.get('torch_peak_memory_gb'), '.1f')
      how = f'torch {row.get("torch_version", "?")} {row.get("torch_dtype", "")}'
      how += ' compiled' if row.get('torch_compiled') else ' eager'
      cells = [
        f'PyTorch reference ({how}), same shape as "{label}"',
        _machine(row),
        _command(row),
        row.get('date', '—'),
        _num(row['torch_tokens_per_s'], ',.0f'),
        _num(row.get('torch_mfu'), '.1%'),
        tmem + (' GB' if tmem != '—' else ''),
        '—',
        '1.00×',
      ]
      out.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(out)


def failure_row(
  label: str, rc: int, timeout_s: int, log_text: str, args: list[str], reason: str = ''
) -> dict:
  """A row for a run that wrote none: why, in one line (`reason`, when given)."""
  if reason:
    error = reason
  elif rc in (124, 137):
    error = f'did not finish in {timeout_s} s'
  else:
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    oom = [ln for ln in lines if 'RESOURCE_EXHAUSTED' in ln or 'out of memory' in ln.lower()]
    last = (oom or lines or [f'exit code {rc}'])[-1]
    error = ('out of memory: ' if oom else f'failed (exit {rc}): ') + last[:200]
  return {
    'label': label,
    'command': 'python -m benchmarks.train_step ' + ' '.join(args),
    'date': time.strftime('%Y-%m-%d'),
    'error': error.replace('|', '/'),
  }


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = p.add_subparsers(dest='cmd', required=True)
  t = sub.add_parser('table')
  t.add_argument('rows')
  f = sub.add_parser('failure')
  f.add_argument('rows')
  f.add_argument('--label', required=True)
  f.add_argument('--rc', type=int, required=True)
  f.add_argument('--timeout', type=int, default=0)
  f.add_argument('--log', default='')
  f.add_argument('--reason', default='', help='Why, when the run did not start.')
  argv = list(sys.argv[1:] if argv is None else argv)
  # After `--`: the failed run's own flags, kept verbatim.
  run_args = argv[argv.index('--') + 1 :] if '--' in argv else []
  a = p.parse_args(argv[: argv.index('--')] if '--' in argv else argv)
  if a.cmd == 'table':
    print(table(read_rows(a.rows)))
    return
  text = ''
  if a.log:
    try:
      with open(a.log, errors='replace') as fh:
        text = fh.read()
    except OSError:
      pass
  with open(a.rows, 'a') as fh:
    fh.write(json.dumps(failure_row(a.label, a.rc, a.timeout, text, run_args, a.reason)) + '\n')


if __name__ == '__main__':
  main(sys.argv[1:])
