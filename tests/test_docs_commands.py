"""The commands in the docs' ```bash blocks (README.md, docs/*.md) work as written.

Every `python -m <module> ...` line of a bash block is expanded by bash itself (the block's
`NAME=(...)` arrays included) and then:
* a sweep, TPU or SLURM command runs with --dry_run (its flags, sweep file, --only names and
  overrides all checked, nothing started), with workdirs moved to a scratch folder;
* a training command runs for 2 steps;
* the tools that read finished runs (launch.compare, launch.attention, launch.sample,
  launch.eval, benchmarks.profile --run), the coordinate check, and templates with `...`
  placeholders are checked for their flags only (absl's --helpxml lists them);
  tests/test_compare.py, test_attention_map.py, test_trained_tools.py and test_mup.py run them
  for real.
"""

import glob
import os
import re
import subprocess
import sys

import pytest

from tests.cluster import REPO

pytestmark = pytest.mark.slow

DOCS = ['README.md', *sorted(os.path.relpath(p, REPO) for p in glob.glob(f'{REPO}/docs/*.md'))]
DRY_RUN = {'launch.sweep', 'launch.tpu', 'launch.slurm'}
FEW_STEPS = {'launch.train'}
FLAGS_ONLY = {
  'launch.compare',
  'launch.attention',
  'launch.sample',
  'launch.eval',
  'benchmarks.profile',
  'experiments.coord_check',
}
TWO_STEPS = [
  '--config.train.steps=2',
  '--config.train.warmup_steps=1',
  '--config.eval.every=2',
  '--config.eval.batches=1',
  '--config.checkpoint.every=2',
]


def _blocks(path: str) -> list[list[tuple[int, str]]]:
  """The (line number, line with its continuations joined) of each ```bash block."""
  out, block = [], None
  with open(os.path.join(REPO, path)) as f:
    for n, line in enumerate(f, 1):
      if block is None and line.strip() == '```bash':
        block = []
      elif block is not None and line.strip() == '```':
        out.append(block)
        block = None
      elif block is not None:
        if block and block[-1][1].endswith('\\'):
          block[-1] = (block[-1][0], block[-1][1][:-1] + ' ' + line.strip())
        else:
          block.append((n, line.rstrip('\n')))
  return out


def _commands() -> list[tuple[str, str, str]]:
  """(id, module, argv as bash expands it) for every python -m line of a bash block."""
  out = []
  for doc in DOCS:
    for block in _blocks(doc):
      arrays = [ln for _, ln in block if re.match(r'^[A-Z_]+=\(', ln)]
      for n, line in block:
        m = re.match(r'^\s*(?:\.venv/bin/)?python3? -m ([\w.]+)(.*)$', line)
        if m:
          out.append((f'{doc}:{n}', m.group(1), '\n'.join([*arrays, m.group(2)])))
  return out


COMMANDS = _commands()


def _expand(text: str, env: dict) -> list[str]:
  *arrays, args = text.split('\n')
  script = '\n'.join([*arrays, f"printf '%s\\0' {args}"])
  r = subprocess.run(['bash', '-c', script], capture_output=True, env=env, check=True)
  return [a.decode() for a in r.stdout.split(b'\0')[:-1]]


def _defined_flags(module: str, env: dict) -> set[str]:
  r = subprocess.run(
    [sys.executable, '-m', module, '--helpxml'], cwd=REPO, env=env, capture_output=True, text=True
  )
  names = set(re.findall(r'<name>([^<]+)</name>', r.stdout))
  assert names, r.stderr[-2000:]
  return names | {f'no{n}' for n in names}


def test_docs_have_commands_of_every_kind():
  modules = {m for _, m, _ in COMMANDS}
  assert modules >= DRY_RUN | FEW_STEPS | FLAGS_ONLY, modules
  assert modules <= DRY_RUN | FEW_STEPS | FLAGS_ONLY, modules - (DRY_RUN | FEW_STEPS | FLAGS_ONLY)


@pytest.mark.parametrize('where,module,text', COMMANDS, ids=[c[0] for c in COMMANDS])
def test_docs_command_works(where, module, text, tmp_path):
  env = dict(os.environ, USER='docs', PYTHONPATH=REPO)
  argv = _expand(text, env)
  template = any(a == '...' or a.endswith('=...') for a in argv)  # fill in your own
  if module in FLAGS_ONLY or template:
    defined = _defined_flags(module, env)
    for arg in argv:
      name = arg[2:].split('=')[0] if arg.startswith('--') else ''
      if name:  # --config.KEY / --data.KEY: the config flag is the part before the dot
        assert name.split('.')[0] in defined, f'{where}: {module} has no flag --{name}'
    return
  scratch = str(tmp_path / 'wd')
  if module != 'launch.tpu':  # the TPU launcher's dry run only prints gcloud commands
    argv = [re.sub(r'^--workdir=.*', f'--workdir={scratch}', a) for a in argv]
  if module in DRY_RUN and '--dry_run' not in argv:
    argv.append('--dry_run')
  if module in FEW_STEPS:
    argv += TWO_STEPS
  r = subprocess.run(
    [sys.executable, '-m', module, *argv],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert r.returncode == 0, f'{where}: {module} {argv}\n{r.stderr[-2000:]}'
  if module in FEW_STEPS:
    assert os.path.exists(os.path.join(scratch, 'summary.json'))
  else:
    assert 'dry run' in r.stdout + r.stderr or '--dry_run' in ' '.join(argv)
