"""The catalogue of bad inputs: every entry point, every case fails cleanly and writes nothing.

Each case runs an entry point in-process exactly as `python -m <module> ARGS` would (runpy as
__main__, app.run and its flag parser included) and checks: a non-zero exit status, exactly one
line of message on stderr (absl INFO/WARNING log lines aside), no traceback, and that nothing
was written: the case's own folder stays empty, the shared inputs and a trained run with its
checkpoints are byte-for-byte and mtime-for-mtime what they were.

Placeholders in the arguments: {case} (an empty folder of this case; {case}/run is a workdir
that must not appear), {inputs} (shared bad files), {ckpt} (a trained run with checkpoints).
"""

import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import runpy
import signal
import sys
import traceback
import warnings

import pytest
from absl import app, flags
from absl import logging as absl_logging

from tests.cluster import REPO

TINY = [
  '--config.model.d_model=32',
  '--config.model.num_layers=2',
  '--config.model.num_heads=4',
  '--config.model.max_seq_len=32',
  '--config.data.seq_len=32',
  '--config.train.steps=2',
  '--config.train.global_batch=8',
  '--config.train.warmup_steps=1',
  '--config.eval.every=2',
  '--config.eval.batches=1',
  '--config.eval.batch_size=8',
  '--config.checkpoint.every=2',
  '--config.checkpoint.async_save=false',
  '--config.log_every=1',
  '--config.peak_flops=1e12',
]
LOG_LINE = re.compile(r'^([IW]\d{4} \d\d:\d\d:\d\d\.\d+ |(INFO|WARNING):absl:)')


@dataclasses.dataclass
class Result:
  code: object
  stdout: str
  stderr: str


def _entry_point_flags() -> dict:
  """Flags that entry points of this repository (and their config overrides) defined."""
  library = set()
  for module, defined in flags.FLAGS.flags_by_module_dict().items():
    if module != '__main__' and module.split('.')[0] not in _PACKAGES and REPO not in module:
      library.update(n for f in defined for n in (f.name, f.short_name) if n)
  return {n: flags.FLAGS[n] for n in flags.FLAGS if n not in library or '.' in n}


def _remove_flags(names) -> None:
  for name in names:
    if name in flags.FLAGS:
      delattr(flags.FLAGS, name)


def _take_flag_modules() -> dict:
  """Takes this repository's imported modules that define absl flags on import out of
  sys.modules (and off their parent packages), returning them. An entry point run next imports
  them afresh and defines their flags again, instead of finding a cached module whose flags
  were set aside (benchmarks.profile imports benchmarks.train_step, for one)."""
  taken = {}
  for name, mod in list(sys.modules.items()):
    path = getattr(mod, '__file__', None) or ''
    if name.split('.')[0] not in _PACKAGES - {'tests'} or not path.endswith('.py'):
      continue
    with open(path) as f:
      if 'flags.DEFINE_' not in f.read():
        continue
    parent, _, child = name.rpartition('.')
    attr = vars(sys.modules[parent]).pop(child, None) if parent in sys.modules else None
    taken[name] = (sys.modules.pop(name), attr)
  return taken


def _put_back_modules(taken: dict) -> None:
  for name, (mod, attr) in taken.items():
    sys.modules[name] = mod
    parent, _, child = name.rpartition('.')
    if attr is not None and parent in sys.modules:
      setattr(sys.modules[parent], child, attr)


def run_entry(module: str, argv: list[str]) -> Result:
  """`python -m module *argv`, in this process: exit status, stdout, stderr.

  Entry points define their flags on absl's global FLAGS when run; flags that other imports
  defined are set aside for the run (else they would clash) and put back afterwards, and so
  are the modules that defined them.
  """
  app.define_help_flags()
  taken = _take_flag_modules()
  set_aside = _entry_point_flags()
  _remove_flags(set_aside)
  out, err = io.StringIO(), io.StringIO()
  handler = absl_logging.get_absl_handler().python_handler
  saved_argv, saved_stream = sys.argv, handler.stream
  saved_signals = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
  sys.argv, handler.stream = [module, *argv], err
  code = 0
  try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*found in sys.modules', category=RuntimeWarning)
        try:
          runpy.run_module(module, run_name='__main__', alter_sys=True)
        except SystemExit as e:
          code = 0 if e.code is None else e.code
        except BaseException as e:  # noqa: BLE001 - what a user would see as a traceback
          code = f'uncaught {type(e).__name__}'
          err.write(traceback.format_exc())
  finally:
    sys.argv, handler.stream = saved_argv, saved_stream
    for sig, action in saved_signals.items():  # launch.sweep installs its own
      signal.signal(sig, action)
    _remove_flags(_entry_point_flags())
    _take_flag_modules()  # those this run imported, with the flags just removed
    _put_back_modules(taken)
    for name, flag in set_aside.items():
      flags.FLAGS[name] = flag
  return Result(code, out.getvalue(), err.getvalue())


_PACKAGES = {'core', 'launch', 'benchmarks', 'data', 'train', 'experiments', 'models', 'tests'}


def message_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]


def snapshot(root: str) -> dict:
  """Every path under root with its size, mtime and content hash."""
  out = {}
  for dirpath, dirnames, filenames in os.walk(root):
    for d in dirnames:
      out[os.path.relpath(os.path.join(dirpath, d), root)] = 'dir'
    for f in filenames:
      path = os.path.join(dirpath, f)
      st = os.stat(path)
      with open(path, 'rb') as fh:
        digest = hashlib.sha256(fh.read()).hexdigest()
      out[os.path.relpath(path, root)] = (st.st_size, st.st_mtime_ns, digest)
  return out


# -- The cases ---------------------------------------------------------------------------------

TRAIN = 'launch.train'


def train_case(*args: str, workdir: str = '{case}/run', config: str = '') -> tuple[str, list]:
  first = [f'--config={config}'] if config else []  # config_flags wants it before overrides
  return TRAIN, [*first, *TINY, *args, f'--workdir={workdir}']


CASES: dict[str, tuple[str, list[str]]] = {
  # Config files and keys.
  'train/key-typo': train_case('--config.model.d_modle=64'),
  'train/unknown-section': train_case('--config.modle.d_model=64'),
  'train/unknown-key-no-match': train_case('--config.train.zzzzqq=1'),
  'train/bad-int-value': train_case('--config.train.steps=abc'),
  'train/bad-bool-value': train_case('--config.checkpoint.async_save=maybe'),
  'train/config-missing': train_case(config='experiments/configs/nope.py'),
  'train/config-syntax-error': train_case(config='{inputs}/broken.py'),
  'train/config-no-get-config': train_case(config='{inputs}/noget.py'),
  'train/config-raises': train_case(config='{inputs}/raises.py'),
  'train/config-is-a-folder': train_case(config='{inputs}'),
  'train/gpt3-unknown-row': train_case(config='experiments/configs/gpt3.py:Huge'),
  'train/gpt3-bad-factor': train_case(config='experiments/configs/gpt3.py:Small,abc'),
  'train/unknown-flag': train_case('--wrokdir=x'),
  'train/positional-argument': train_case('extra'),
  'train/no-workdir': (TRAIN, TINY),
  # Ranges.
  'train/steps-0': train_case('--config.train.steps=0'),
  'train/steps-negative': train_case('--config.train.steps=-5'),
  'train/batch-0': train_case('--config.train.global_batch=0'),
  'train/batch-negative': train_case('--config.train.global_batch=-4'),
  'train/grad-accum-0': train_case('--config.train.grad_accum=0'),
  'train/grad-accum-not-dividing': train_case('--config.train.grad_accum=3'),
  'train/seq-len-0': train_case('--config.data.seq_len=0'),
  'train/seq-len-negative': train_case('--config.data.seq_len=-8'),
  'train/seq-len-over-positions': train_case('--config.data.seq_len=64'),
  'train/vocab-not-the-tokenizers': train_case('--config.model.vocab_size=300'),
  'train/eval-every-0': train_case('--config.eval.every=0'),
  'train/checkpoint-every-0': train_case('--config.checkpoint.every=0'),
  'train/log-every-0': train_case('--config.log_every=0'),
  'train/eval-batch-size-0': train_case('--config.eval.batch_size=0'),
  'train/eval-batches-0': train_case('--config.eval.batches=0'),
  'train/eval-batch-not-splitting': train_case('--config.eval.batch_size=12'),
  'train/lr-nan': train_case('--config.train.lr=nan'),
  'train/lr-inf': train_case('--config.train.lr=inf'),
  'train/lr-negative': train_case('--config.train.lr=-0.01'),
  'train/lr-0': train_case('--config.train.lr=0'),
  'train/grad-clip-nan': train_case('--config.train.grad_clip=nan'),
  'train/grad-clip-negative': train_case('--config.train.grad_clip=-1'),
  'train/warmup-negative': train_case('--config.train.warmup_steps=-10'),
  'train/max-to-keep-0': train_case('--config.checkpoint.max_to_keep=0'),
  'train/schedule-unknown': train_case('--config.train.schedule=linear'),
  'train/b2-is-1': train_case('--config.train.b2=1.0'),
  'train/eps-0': train_case('--config.train.eps=0'),
  'train/weight-decay-negative': train_case('--config.train.weight_decay=-0.1'),
  'train/min-lr-ratio-over-1': train_case('--config.train.min_lr_ratio=2'),
  'train/seed-negative': train_case('--config.seed=-1'),
  'train/stop-after-negative': train_case('--stop_after_step=-3'),
  # The model.
  'train/cudnn-without-gpu': train_case('--config.model.attention_impl=cudnn'),
  'train/rope-odd-head-dim': train_case(
    '--config.model.pos_emb=rope', '--config.model.d_model=36', '--config.model.num_heads=4'
  ),
  'train/heads-not-dividing': train_case('--config.model.num_heads=3'),
  'train/kv-heads-not-dividing': train_case('--config.model.num_kv_heads=3'),
  'train/layers-0': train_case('--config.model.num_layers=0'),
  'train/dtype-unknown': train_case('--config.model.dtype=float8'),
  'train/pos-emb-unknown': train_case('--config.model.pos_emb=alibi'),
  'train/remat-unknown': train_case('--config.model.remat=some'),
  'train/vocab-mismatch': train_case('--config.model.vocab_size=100'),
  'train/init-std-0': train_case('--config.model.init_std=0'),
  'train/mesh-wrong-product': train_case('--config.mesh.data=3'),
  'train/mesh-unknown-axis': train_case('--config.mesh.pipeline=2'),
  # Where it writes and what it reads.
  'train/workdir-in-proc': train_case(workdir='/proc/scaling_lm_bad_input/run'),
  'train/workdir-is-a-file': train_case(workdir='{inputs}/afile.txt'),
  'train/workdir-under-a-file': train_case(workdir='{inputs}/afile.txt/run'),
  'train/workdir-unknown-scheme': train_case(workdir='s3://bucket/run'),
  'train/data-dir-is-a-file': train_case('--config.data.data_dir={inputs}/afile.txt'),
  'train/dataset-not-prepared': train_case(
    '--config.data.name=lm1b', '--config.data.data_dir={case}/nothing'
  ),
  'train/text-folder-without-glob': train_case('--config.data.name=text_folder'),
  'train/text-folder-empty-glob': train_case(
    '--config.data.name=text_folder',
    '--config.data.text_glob={inputs}/empty/*.txt',
    '--config.data.data_dir={case}/tfds',
  ),
  'train/text-folder-one-file': train_case(
    '--config.data.name=text_folder',
    '--config.data.text_glob={inputs}/one/*.txt',
    '--config.data.data_dir={case}/tfds',
  ),
  'train/split-unknown': train_case('--config.data.train_split=tarin'),
  'train/text-key-unknown': train_case('--config.data.text_key=body'),
  'train/tokenizer-junk-file': train_case('--config.data.tokenizer={inputs}/junk.model'),
  'train/tokenizer-missing-file': train_case('--config.data.tokenizer={inputs}/none.model'),
  'train/tokenizer-unknown': train_case('--config.data.tokenizer=gpt2'),
  # An existing run: its checkpoints must survive the bad command untouched.
  'train/resume-other-model': train_case('--config.model.d_model=64', workdir='{ckpt}'),
  'train/resume-steps-0': train_case('--config.train.steps=0', workdir='{ckpt}'),
  'train/resume-max-to-keep-0': train_case('--config.checkpoint.max_to_keep=0', workdir='{ckpt}'),
  'train/resume-lr-nan': train_case('--config.train.lr=nan', workdir='{ckpt}'),
  # Sweeps (nothing may be launched or written).
  'sweep/file-missing': (
    'launch.sweep',
    ['--sweep=experiments/sweeps/nope.py', '--workdir={case}/sw'],
  ),
  'sweep/file-broken': ('launch.sweep', ['--sweep={inputs}/broken.py', '--workdir={case}/sw']),
  'sweep/override-typo': (
    'launch.sweep',
    ['--sweep=experiments/sweeps/demo.py', '--workdir={case}/sw', '--override=train.stepz=3'],
  ),
  'sweep/override-no-equals': (
    'launch.sweep',
    ['--sweep=experiments/sweeps/demo.py', '--workdir={case}/sw', '--override=train.steps'],
  ),
  'sweep/override-bad-type': (
    'launch.sweep',
    ['--sweep=experiments/sweeps/demo.py', '--workdir={case}/sw', '--override=train.steps=x'],
  ),
  'sweep/override-steps-0': (
    'launch.sweep',
    ['--sweep=experiments/sweeps/demo.py', '--workdir={case}/sw', '--override=train.steps=0'],
  ),
  'sweep/override-lr-nan': (
    'launch.sweep',
    ['--sweep=experiments/sweeps/demo.py', '--workdir={case}/sw', '--override=train.lr=nan'],
  ),
  'sweep/only-unknown-run': (
    'launch.sweep',
    ['--sweep=experiments/sweeps/demo.py', '--workdir={case}/sw', '--only=nosuchrun'],
  ),
  'sweep/parallel-negative': (
    'launch.sweep',
    ['--sweep=experiments/sweeps/demo.py', '--workdir={case}/sw', '--parallel=-1'],
  ),
  'sweep/devices-per-run-negative': (
    'launch.sweep',
    ['--sweep=experiments/sweeps/demo.py', '--workdir={case}/sw', '--devices_per_run=-2'],
  ),
  # Branching from another run's checkpoint (train.init_from, train.init_step).
  'train/init-step-0': train_case(
    '--config.train.init_from={inputs}', '--config.train.init_step=0'
  ),
  'train/init-step-past-steps': train_case(
    '--config.train.init_from={inputs}', '--config.train.init_step=2'
  ),
  'train/init-from-without-checkpoints': train_case(
    '--config.train.init_from={inputs}', '--config.train.init_step=1'
  ),
  # Comparing sweeps.
  'compare/dir-missing': ('launch.compare', ['{case}/nosweep', '--out={case}/out/s.png']),
  'compare/dir-empty': ('launch.compare', ['{inputs}/empty', '--out={case}/out/s.png']),
  'compare/a-file-not-a-sweep': ('launch.compare', ['{inputs}/afile.txt', '--out={case}/s.png']),
  'compare/merge-with-an-empty-dir': (
    'launch.compare',
    ['--merge', '{inputs}/empty', '{case}/nosweep', '--out={case}/out/s.png'],
  ),
  # Attention maps.
  'attention/workdir-missing': ('launch.attention', ['--workdir={case}/run']),
  'attention/not-a-run': ('launch.attention', ['--workdir={inputs}/empty']),
  'attention/layers-out-of-range': (
    'launch.attention',
    ['--workdir={ckpt}', '--layers=99', '--out={case}/a.png'],
  ),
  'attention/layers-not-numbers': (
    'launch.attention',
    ['--workdir={ckpt}', '--layers=first', '--out={case}/a.png'],
  ),
  # Data tools.
  'tokenizer/vocab-0': ('data.tokenizer', ['--vocab_size=0']),
  'tokenizer/vocab-negative': ('data.tokenizer', ['--vocab_size=-5']),
  'tokenizer/config-typo': ('data.tokenizer', ['--config.data.nmae=x']),
  'tokenizer/dataset-missing': (
    'data.tokenizer',
    ['--config.data.name=lm1b', '--config.data.data_dir={case}/nothing'],
  ),
  'text_corpus/empty-glob': (
    'data.text_corpus',
    ['--text_glob={inputs}/empty/*.txt', '--data_dir={case}/tfds'],
  ),
  'text_corpus/missing-folder': (
    'data.text_corpus',
    ['--text_glob={case}/nowhere/*.txt', '--data_dir={case}/tfds'],
  ),
  'text_corpus/one-file': (
    'data.text_corpus',
    ['--text_glob={inputs}/one/*.txt', '--data_dir={case}/tfds'],
  ),
  'text_corpus/data-dir-is-a-file': (
    'data.text_corpus',
    ['--text_glob={inputs}/one/*.txt', '--data_dir={inputs}/afile.txt'],
  ),
  # Benchmarks.
  'bench/shape-bogus': ('benchmarks.train_step', ['--shapes=bogus', '--compile_only']),
  'bench/gpt3-unknown': ('benchmarks.train_step', ['--shapes=gpt3.Huge', '--compile_only']),
  'bench/seq-len-0': ('benchmarks.train_step', ['--shapes=d32.L1.H4', '--seq_len=0']),
  'bench/batch-0': ('benchmarks.train_step', ['--shapes=d32.L1.H4', '--batch=0']),
  'bench/steps-0': ('benchmarks.train_step', ['--shapes=d32.L1.H4', '--steps=0']),
  'bench/mesh-wrong': ('benchmarks.train_step', ['--shapes=d32.L1.H4', '--mesh=data=3']),
  'bench/mesh-malformed': ('benchmarks.train_step', ['--shapes=d32.L1.H4', '--mesh=data']),
  'bench/cudnn-without-gpu': (
    'benchmarks.train_step',
    ['--shapes=d32.L1.H4', '--attention_impl=cudnn'],
  ),
  'bench/dtype-unknown': ('benchmarks.train_step', ['--dtype=float16']),
  'bench/splash-without-tpu': (
    'benchmarks.train_step',
    ['--shapes=d32.L1.H4', '--attention_impl=splash'],
  ),
  'bench/torch-only-compile-only': (
    'benchmarks.train_step',
    ['--shapes=d32.L1.H4', '--torch_only', '--compile_only'],
  ),
  'profile/cudnn-without-gpu': (
    'benchmarks.profile',
    ['--shapes=d32.L1.H4', '--attention_impl=cudnn', '--trace_dir={case}/trace'],
  ),
  'data_bench/batches-0': ('benchmarks.data_throughput', ['--batches=0']),
  'data_bench/seq-len-negative': ('benchmarks.data_throughput', ['--config.data.seq_len=-8']),
  # Corpora, tokenizers, changed sweep runs, compare's output.
  'train/text-folder-binary-files': train_case(
    '--config.data.name=text_folder',
    '--config.data.text_glob={inputs}/binary/*',
    '--config.data.data_dir={case}/tfds',
  ),
  'train/text-folder-empty-files': train_case(
    '--config.data.name=text_folder',
    '--config.data.text_glob={inputs}/emptyfiles/*.txt',
    '--config.data.data_dir={case}/tfds',
  ),
  'train/jsonl-without-glob': train_case('--config.data.name=jsonl'),
  'train/jsonl-no-such-files': train_case(
    '--config.data.name=jsonl', '--config.data.text_glob={case}/none/*.jsonl'
  ),
  'train/jsonl-no-validation-split': train_case(
    '--config.data.name=jsonl', '--config.data.text_glob={inputs}/jsonl/*.jsonl'
  ),
  'train/jsonl-text-key-unknown': train_case(
    '--config.data.name=jsonl',
    '--config.data.text_glob={inputs}/jsonl/*.jsonl',
    '--config.data.eval_split=test',
    '--config.data.text_key=body',
  ),
  'train/parquet-not-parquet': train_case(
    '--config.data.name=parquet',
    '--config.data.text_glob={inputs}/jsonl/*.jsonl',
    '--config.data.eval_split=test',
  ),
  'train/tokenizer-json-junk': train_case('--config.data.tokenizer={inputs}/junk.json'),
  'train/tokenizer-json-missing': train_case('--config.data.tokenizer={inputs}/none.json'),
  'tokenizer/kind-unknown': ('data.tokenizer', ['--kind=wordpiece']),
  'sweep/changed-run': (
    'launch.sweep',
    ['--sweep=experiments/sweeps/demo.py', '--workdir={inputs}/sweep', '--only=L2-d32-h2'],
  ),
  'compare/out-below-a-file': (
    'launch.compare',
    ['{inputs}/fits', '--out={inputs}/afile.txt/s.png', '--bootstrap=0'],
  ),
  'compare/out-in-proc': (
    'launch.compare',
    ['{inputs}/fits', '--out=/proc/scaling_lm_bad_input/s.png', '--bootstrap=0'],
  ),
  # Block options, the profiler hook, sampling, evaluation, loss to loss.
  'train/norm-unknown': train_case('--config.model.norm=batchnorm'),
  'train/mlp-unknown': train_case('--config.model.mlp=relu'),
  'train/use-bias-not-bool': train_case('--config.model.use_bias=maybe'),
  'train/profile-steps-malformed': train_case('--config.train.profile_steps=abc'),
  'train/profile-steps-empty-window': train_case('--config.train.profile_steps=2:1'),
  'train/profile-steps-past-end': train_case('--config.train.profile_steps=1:5'),
  'sample/workdir-missing': ('launch.sample', ['--workdir={case}/run', '--prompt=a']),
  'sample/not-a-run': ('launch.sample', ['--workdir={inputs}/empty', '--prompt=a']),
  'sample/no-prompt': ('launch.sample', ['--workdir={ckpt}']),
  'sample/prompt-empty': ('launch.sample', ['--workdir={ckpt}', '--prompt=']),
  'sample/max-tokens-0': ('launch.sample', ['--workdir={ckpt}', '--prompt=a', '--max_tokens=0']),
  'sample/past-positions': ('launch.sample', ['--workdir={ckpt}', '--prompt=a', '--max_tokens=40']),
  'sample/temperature-negative': (
    'launch.sample',
    ['--workdir={ckpt}', '--prompt=a', '--temperature=-1'],
  ),
  'sample/temperature-nan': (
    'launch.sample',
    ['--workdir={ckpt}', '--prompt=a', '--temperature=nan'],
  ),
  'sample/top-k-negative': ('launch.sample', ['--workdir={ckpt}', '--prompt=a', '--top_k=-2']),
  'sample/top-k-over-vocab': ('launch.sample', ['--workdir={ckpt}', '--prompt=a', '--top_k=1000']),
  'sample/positional-argument': ('launch.sample', ['--workdir={ckpt}', '--prompt=a', 'extra']),
  'eval/workdir-missing': ('launch.eval', ['--workdir={case}/run']),
  'eval/not-a-run': ('launch.eval', ['--workdir={inputs}/empty']),
  'eval/batches-0': ('launch.eval', ['--workdir={ckpt}', '--batches=0']),
  'eval/batch-size-0': ('launch.eval', ['--workdir={ckpt}', '--batch_size=0']),
  'eval/data-key-typo': ('launch.eval', ['--workdir={ckpt}', '--data.nmae=x']),
  'eval/data-bad-type': ('launch.eval', ['--workdir={ckpt}', '--data.seq_len=abc']),
  'eval/other-tokenizer': (
    'launch.eval',
    ['--workdir={ckpt}', '--data.tokenizer={inputs}/x.model'],
  ),
  'eval/other-seq-len': ('launch.eval', ['--workdir={ckpt}', '--data.seq_len=16']),
  'eval/label-a-path': ('launch.eval', ['--workdir={ckpt}', '--label=a/b']),
  'eval/out-folder-missing': ('launch.eval', ['--workdir={ckpt}', '--out={case}/no/e.json']),
  'eval/split-unknown': ('launch.eval', ['--workdir={ckpt}', '--data.eval_split=tset']),
  'eval/dataset-not-prepared': (
    'launch.eval',
    ['--workdir={ckpt}', '--data.name=lm1b', '--data.data_dir={case}/nothing'],
  ),
  'compare/loss-to-loss-one-label': (
    'launch.compare',
    ['{inputs}/empty', '--loss_to_loss=a', '--out={case}/l.png'],
  ),
  'compare/loss-to-loss-no-evals': (
    'launch.compare',
    ['{inputs}/empty', '--loss_to_loss=a,b', '--out={case}/l.png'],
  ),
  'profile/run-without-trace': ('benchmarks.profile', ['--run={ckpt}']),
  # muP.
  'train/parametrization-unknown': train_case('--config.model.parametrization=ntk'),
  'train/mup-base-width-0': train_case(
    '--config.model.parametrization=mup', '--config.model.mup_base_width=0'
  ),
  'coord_check/one-width': ('experiments.coord_check', ['--widths=64', '--out={case}/c.png']),
  'coord_check/width-not-int': ('experiments.coord_check', ['--widths=32,x', '--out={case}/c.png']),
  'coord_check/heads-not-dividing': (
    'experiments.coord_check',
    ['--widths=32,48', '--heads=5', '--out={case}/c.png'],
  ),
  'coord_check/lr-0': ('experiments.coord_check', ['--lr=0', '--out={case}/c.png']),
  'coord_check/steps-0': ('experiments.coord_check', ['--steps=0', '--out={case}/c.png']),
  'coord_check/out-not-png': ('experiments.coord_check', ['--out={case}/c.txt']),
}


# -- The fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def inputs(tmp_path_factory):
  root = tmp_path_factory.mktemp('inputs')
  (root / 'broken.py').write_text('def get_config(:\n')
  (root / 'noget.py').write_text('X = 1\n')
  (root / 'raises.py').write_text("def get_config():\n  raise RuntimeError('boom')\n")
  (root / 'junk.model').write_bytes(bytes(range(256)) * 8)
  (root / 'afile.txt').write_text('not a folder\n')
  (root / 'empty').mkdir()
  (root / 'one').mkdir()
  (root / 'one' / 'only.txt').write_text('To be, or not to be, that is the question.\n' * 50)
  (root / 'binary').mkdir()
  (root / 'emptyfiles').mkdir()
  (root / 'jsonl').mkdir()
  for i in range(4):
    (root / 'binary' / f'{i}.bin').write_bytes(bytes(range(256)) * 64)
    (root / 'emptyfiles' / f'{i}.txt').write_text('')
  for split in ('train', 'test'):
    line = json.dumps({'text': 'To be, or not to be, that is the question. ' * 40})
    (root / 'jsonl' / f'{split}.jsonl').write_text((line + '\n') * 20)
  (root / 'junk.json').write_text('{"not": "a tokenizer"}')
  for k, n in enumerate([1e5, 3e5, 1e6, 3e6, 1e7]):  # a sweep that fits: compare gets to --out
    run = root / 'fits' / 'runs' / f'r{k}'
    run.mkdir(parents=True)
    loss = 1.0 + 20 * n**-0.3
    evals = [
      {
        'kind': 'eval',
        'step': s,
        'eval_loss': loss + 1 / s,
        'tokens': 1e8 * s / 2,
        'flops': 3e8 * n * s,
      }
      for s in (1, 2)
    ]
    (run / 'metrics.jsonl').write_text(''.join(json.dumps(e) + '\n' for e in evals))
    summary = {'n_params': int(n * 1.1), 'n_params_nonembed': int(n), 'flops_per_token': 6 * n}
    summary.update(tokens_seen=int(1e8), final_eval_loss=loss, final_eval_loss_sem=0.01)
    (run / 'summary.json').write_text(json.dumps(summary))
  # A sweep whose one run was trained for other steps than the demo asks (config.json).
  from experiments import sweep_spec

  (run,) = sweep_spec.select(
    sweep_spec.expand(os.path.join(REPO, 'experiments/sweeps/demo.py')).runs, ['L2-d32-h2']
  )
  config, _ = sweep_spec.apply_overrides(sweep_spec.load_config(run.config), run.overrides, 'x')
  config = config.to_dict()
  config['train']['steps'] = 50
  (root / 'sweep' / 'runs' / run.name).mkdir(parents=True)
  (root / 'sweep' / 'runs' / run.name / 'config.json').write_text(json.dumps(config))
  (root / 'sweep' / 'runs' / run.name / 'summary.json').write_text('{}')
  return str(root)


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
  """A finished tiny run with checkpoints, trained through the same command line."""
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  r = run_entry(TRAIN, [*TINY, f'--workdir={workdir}'])
  assert r.code == 0, r.stderr[-3000:]  # the harness runs a good command to the end
  assert os.listdir(os.path.join(workdir, 'checkpoints'))
  return workdir


def _expand(argv: list[str], **where: str) -> list[str]:
  return [a.format(**where) for a in argv]


@pytest.mark.parametrize('case', list(CASES))
def test_bad_input_fails_cleanly_and_writes_nothing(case, inputs, request, tmp_path):
  module, argv = CASES[case]
  # Only the cases that name the trained run pay for training it (once).
  ckpt = request.getfixturevalue('ckpt') if any('{ckpt}' in a for a in argv) else '/nonexistent'
  case_dir = tmp_path / 'case'
  case_dir.mkdir()
  before = {root: snapshot(root) for root in (inputs, ckpt) if os.path.exists(root)}
  repo_before = sorted(os.listdir(REPO))
  cwd = os.getcwd()
  os.chdir(REPO)  # config and sweep paths are repo-relative, as in the README
  try:
    r = run_entry(module, _expand(argv, case=str(case_dir), inputs=inputs, ckpt=ckpt))
  finally:
    os.chdir(cwd)
  lines = message_lines(r.stderr)
  assert isinstance(r.code, int) and r.code != 0, f'exit status {r.code!r}; stderr:\n{r.stderr}'
  assert 'Traceback' not in r.stderr, r.stderr
  assert len(lines) == 1, f'{len(lines)} lines of message:\n' + '\n'.join(lines)
  assert os.listdir(case_dir) == [], f'wrote {os.listdir(case_dir)}'
  for root, snap in before.items():
    assert snapshot(root) == snap, f'{root} changed'
  assert sorted(os.listdir(REPO)) == repo_before
  assert not os.path.exists('/proc/scaling_lm_bad_input')


def test_catalogue_is_large_and_spans_every_entry_point():
  assert len(CASES) >= 60
  modules = {module for module, _ in CASES.values()}
  assert modules >= {
    'launch.train',
    'launch.sweep',
    'launch.compare',
    'launch.attention',
    'data.tokenizer',
    'data.text_corpus',
    'benchmarks.train_step',
  }


def test_key_typo_keeps_did_you_mean(inputs, tmp_path):
  module, argv = CASES['train/key-typo']
  r = run_entry(module, _expand(argv, case=str(tmp_path), inputs=inputs))
  (line,) = message_lines(r.stderr)
  assert '--config.model.d_modle' in line and 'Did you mean "d_model"' in line, line


def test_harness_sees_a_traceback(tmp_path):
  """The checks above are not vacuous: an uncaught error is reported as a traceback."""
  (tmp_path / 'boom.py').write_text("raise RuntimeError('boom')\n")
  sys.path.insert(0, str(tmp_path))
  try:
    r = run_entry('boom', [])
  finally:
    sys.path.remove(str(tmp_path))
    sys.modules.pop('boom', None)
  assert 'Traceback' in r.stderr and r.code == 'uncaught RuntimeError'
