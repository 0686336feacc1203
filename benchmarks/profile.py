"""Where the training step's time goes: traces a few steps and splits device time by operation.

  python -m benchmarks.profile --shapes=d512.L8.H8 --seq_len=256 --batch=8 --steps=3
  python -m benchmarks.profile --shapes=gpt3.Medium --seq_len=2048 --batch=8 --dtype=bfloat16 \
      --vocab=50304 --scan_layers --remat=dots --steps=3
  python -m benchmarks.profile --run=WORKDIR   # a training run's train.profile_steps trace

Takes the shape flags of benchmarks.train_step (and its --config). After compilation and
--warmup untimed steps it traces --steps steps with `jax.profiler`, reads the trace back with
`jax.profiler.ProfileData` (part of jaxlib: no TensorFlow, TensorBoard or xprof needed) and
joins every traced operation to its instruction in the compiled HLO. It prints the top
operations by time and the split between categories:

  matmul            dot/convolution (or a fusion around one), cuBLAS/oneDNN gemm calls
  attention         everything computed inside the attention call (QK^T, softmax, AV, cuDNN
                    fused attention), forward and backward
  elementwise/norm  arithmetic and reductions: bias, GELU, LayerNorm, residuals, loss, casts
  optimizer         the optax update (clipping, AdamW moments, weight decay, apply)
  data movement     copies, transposes, slices (per-layer weight slicing in a scan), gathers
  collectives       all-reduce, all-gather, ...
  other             control flow (while loops) and anything not traced to an instruction

An operation's time is its own time on its thread or stream: operations traced inside it
(the body of a while loop on CPU) are subtracted. On a GPU that is kernel time on the device;
on a CPU the "device" is the host thread pool, and operations that run concurrently on
different threads each count in full, so the total can exceed the wall time. On a GPU the
tool turns XLA's command buffers (CUDA graphs) off unless --command_buffers, so that every
kernel is traced to its operation; the profiled step is then slightly slower than the timed one.
"""

import collections
import dataclasses
import functools
import glob
import linecache
import os
import re
import sys
import tempfile
import time

from absl import app, flags

from benchmarks import train_step

CATEGORIES = (
  'matmul',
  'attention',
  'elementwise/norm',
  'optimizer',
  'data movement',
  'collectives',
  'other',
)

_TOP = flags.DEFINE_integer('top', 15, 'How many operations to list.')
_RUN = flags.DEFINE_string(
  'run', '', 'Summarize the trace a training run wrote (train.profile_steps) instead.'
)
_TRACE_DIR = flags.DEFINE_string('trace_dir', '', 'Keep the trace here (default: a temp dir).')
_COMMAND_BUFFERS = flags.DEFINE_bool(
  'command_buffers',
  False,
  'Keep XLA:GPU command buffers (CUDA graphs). Off by default: kernels replayed from a graph '
  'are not attributed to their HLO operations in the trace.',
)
NO_COMMAND_BUFFERS = '--xla_gpu_enable_command_buffer='

_MATMUL_OPS = {'dot', 'convolution', 'ragged-dot', 'scaled-dot'}
_MOVEMENT_OPS = {
  'copy',
  'copy-start',
  'copy-done',
  'transpose',
  'dynamic-slice',
  'dynamic-update-slice',
  'slice',
  'concatenate',
  'pad',
  'gather',
  'scatter',
  'reshape',
  'bitcast',
  'broadcast',
  'reverse',
  'iota',
  'get-tuple-element',
  'tuple',
  'parameter',
  'constant',
  'bitcast-convert',
  'copy-to-device',
  'dynamic-reshape',
}
_COLLECTIVE_PREFIXES = (
  'all-reduce',
  'all-gather',
  'reduce-scatter',
  'all-to-all',
  'collective-permute',
  'collective-broadcast',
  'ragged-all-to-all',
)
_CONTROL_OPS = {
  'while',
  'conditional',
  'call',
  'async-start',
  'async-update',
  'async-done',
  'send',
  'send-done',
  'recv',
  'recv-done',
  'infeed',
  'outfeed',
  'after-all',
  'add-dependency',
  'optimization-barrier',
  'domain',
  'custom-call',
}
# Ops that carry no work of their own inside a fusion: they don't decide its category.
_PLUMBING = {'parameter', 'constant', 'get-tuple-element', 'tuple', 'bitcast', 'broadcast'}

_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][\w\-]*)\(')
_COMP = re.compile(r'^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$')
_CALLS = re.compile(r'\b(?:calls|to_apply|body|condition|\w+_computations?)=(\{[^}]*\}|%?[\w.\-]+)')
_TARGET = re.compile(r'custom_call_target="([^"]*)"')
_FRAME_ID = re.compile(r'stack_frame_id=(\d+)')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_SOURCE = re.compile(r'source_file="([^"]*)" source_line=(\d+)')
_TABLE_ROW = re.compile(r'^(\d+) (.*)$')
_KV = re.compile(r'(\w+)=(\d+)')
_CALL_NAME = re.compile(r'([A-Za-z_][\w.]*)\s*\(')


@dataclasses.dataclass(frozen=True)
class Frame:
  file: str
  function: str
  line: int
  end_line: int


@dataclasses.dataclass
class Instr:
  name: str
  opcode: str
  computation: str
  called: tuple[str, ...] = ()
  target: str = ''
  op_name: str = ''
  frames: tuple[Frame, ...] = ()  # innermost first


@dataclasses.dataclass(frozen=True)
class OpInfo:
  category: str
  opcode: str
  detail: str  # what a fusion contains, or the custom-call target
  where: str  # innermost source frame: file:line function
  backward: bool


def _stack_tables(lines: list[str]) -> dict[int, tuple[Frame, ...]]:
  """frame id -> its frames (innermost first), from the FileNames ... StackFrames tables."""
  tables: dict[str, dict[int, str]] = {}
  section = None
  for line in lines:
    if line in ('FileNames', 'FunctionNames', 'FileLocations', 'StackFrames'):
      section = tables.setdefault(line, {})
      continue
    m = _TABLE_ROW.match(line) if section is not None else None
    if not m:
      if section is not None and (line.startswith('%') or line.startswith('ENTRY')):
        break
      continue
    section[int(m.group(1))] = m.group(2)
  files = {k: v.strip('"') for k, v in tables.get('FileNames', {}).items()}
  funcs = {k: v.strip('"') for k, v in tables.get('FunctionNames', {}).items()}
  locations = {}
  for k, v in tables.get('FileLocations', {}).items():
    kv = {a: int(b) for a, b in _KV.findall(v)}
    locations[k] = Frame(
      files.get(kv.get('file_name_id'), '?'),
      funcs.get(kv.get('function_name_id'), '?'),
      kv.get('line', 0),
      kv.get('end_line', kv.get('line', 0)),
    )
  raw = {}
  for k, v in tables.get('StackFrames', {}).items():
    kv = {a: int(b) for a, b in _KV.findall(v)}
    # The printed parent is the parent's id + 1; 0 (printed 1 for frame 1) means none.
    raw[k] = (kv.get('file_location_id'), kv.get('parent_frame_id', 1) - 1)
  chains = {}
  for k in raw:
    chain, seen, cur = [], set(), k
    while cur in raw and cur not in seen and len(chain) < 64:
      seen.add(cur)
      loc, parent = raw[cur]
      if loc in locations:
        chain.append(locations[loc])
      cur = parent
    chains[k] = tuple(chain)
  return chains


def parse_hlo(text: str) -> dict[str, Instr]:
  """Instructions of a compiled HLO module's text, by name, with their source frames."""
  lines = text.splitlines()
  chains = _stack_tables(lines)
  instrs: dict[str, Instr] = {}
  comp = ''
  for line in lines:
    if not line.startswith(' '):
      m = _COMP.match(line)
      if m:
        comp = m.group(2)
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, opcode = m.group(1), m.group(2)
    called = []
    for group in _CALLS.findall(line):
      called += [c.strip().lstrip('%') for c in group.strip('{}').split(',') if c.strip()]
    target = _TARGET.search(line)
    op_name = _OP_NAME.search(line)
    frame_id = _FRAME_ID.search(line)
    frames = chains.get(int(frame_id.group(1)), ()) if frame_id else ()
    source = _SOURCE.search(line)
    if source and not frames:
      frames = (Frame(source.group(1), '?', int(source.group(2)), int(source.group(2))),)
    instrs[name] = Instr(
      name,
      opcode,
      comp,
      tuple(called),
      target.group(1) if target else '',
      op_name.group(1) if op_name else '',
      frames,
    )
  return instrs


def _snippet(frame: Frame) -> str:
  return ' '.join(linecache.getline(frame.file, n) for n in range(frame.line, frame.end_line + 1))


@functools.cache
def _model_attention_code() -> frozenset[tuple[str, str]]:
  """(file, function) of this repository's attention computations: the one call site of every
  implementation (models/attention.attend), the cache's, and the kernels' module."""
  from models import attention, kernels

  out = {(attention.__file__, f.__name__) for f in (attention.attend, attention.cached_attention)}
  return frozenset(out | {(kernels.__file__, '*')})


def _calls_attention(frame: Frame) -> bool:
  """True inside an attention function, or at a call of one (jax.nn.dot_product_attention...).

  The model's own attention code is known by file and function; other code by the name of the
  function or of what its line calls (read from the source). Method calls on self
  (`self.attn(...)`, the whole attention layer) and classes (`MultiHeadAttention`) don't
  count: the projections around attention are matmuls.
  """
  code = _model_attention_code()
  function = frame.function.split('.')[-1]
  if (frame.file, function) in code or (frame.file, '*') in code:
    return True
  if 'attention' in function:
    return True
  for call in _CALL_NAME.findall(_snippet(frame)):
    if not call.startswith('self.') and 'attention' in call.split('.')[-1]:
      return True
  return False


def _own_kind(instr: Instr) -> str:
  """The category of one instruction on its own (a fusion is decided by its contents)."""
  target = instr.target.lower()
  if instr.opcode == 'custom-call':
    if any(s in target for s in ('fmha', 'attention', 'flash')):
      return 'attention'
    if any(s in target for s in ('gemm', 'matmul', 'cublas')):
      return 'matmul'
  # The innermost two frames: the operation's own line and the line that called it.
  if any(_calls_attention(f) for f in instr.frames[:2]):
    return 'attention'
  if instr.opcode in _MATMUL_OPS:
    return 'matmul'
  if any('/optax/' in f.file for f in instr.frames):
    return 'optimizer'
  if instr.opcode.startswith(_COLLECTIVE_PREFIXES):
    return 'collectives'
  if instr.opcode in _MOVEMENT_OPS:
    return 'data movement'
  if instr.opcode in _CONTROL_OPS:
    return 'other'
  return 'elementwise/norm'


def _contents(name: str, instrs: dict, by_comp: dict, depth: int = 0) -> list[Instr]:
  """The instructions of the computations a fusion calls, recursively (nested fusions)."""
  out = []
  for comp in instrs[name].called if name in instrs else ():
    for inner in by_comp.get(comp, ()):
      out.append(inner)
      if inner.opcode == 'fusion' and depth < 8:
        out += _contents(inner.name, instrs, by_comp, depth + 1)
  return out


def classify(instrs: dict[str, Instr]) -> dict[str, OpInfo]:
  """Category, contents and source of every instruction."""
  by_comp = collections.defaultdict(list)
  for instr in instrs.values():
    by_comp[instr.computation].append(instr)
  order = ('attention', 'matmul', 'optimizer', 'collectives', 'elementwise/norm', 'data movement')
  out = {}
  for name, instr in instrs.items():
    parts = [instr]
    if instr.opcode == 'fusion':
      parts = [i for i in _contents(name, instrs, by_comp) if i.opcode not in _PLUMBING]
      parts = parts or [instr]
    kinds = {_own_kind(p) for p in parts}
    if instr.opcode == 'fusion' and any(_calls_attention(f) for f in instr.frames[:2]):
      kinds.add('attention')
    category = next((k for k in order if k in kinds), 'other')
    if instr.opcode == 'custom-call':
      detail = instr.target
    elif instr.opcode == 'fusion':
      counts = collections.Counter(p.opcode for p in parts)
      detail = '+'.join(op for op, _ in counts.most_common(4))
    else:
      detail = ''
    frames = instr.frames or next((p.frames for p in parts if p.frames), ())
    where = ''
    if frames:
      f = frames[0]
      where = f'{os.path.basename(f.file)}:{f.line} {f.function.replace("<locals>.", "")}'
    op_names = [instr.op_name] + [p.op_name for p in parts]
    out[name] = OpInfo(
      category, instr.opcode, detail, where, any('transpose(' in o for o in op_names)
    )
  return out


def find_xspace(trace_dir: str) -> str:
  paths = sorted(glob.glob(os.path.join(trace_dir, 'plugins', 'profile', '*', '*.xplane.pb')))
  if not paths:
    raise FileNotFoundError(f'no *.xplane.pb under {trace_dir}/plugins/profile')
  return paths[-1]


# Lines that the profiler derives from others (they would count the same time twice).
_DERIVED_LINES = {
  'XLA Modules',
  'XLA Ops',
  'XLA TraceMe',
  'Steps',
  'Framework Ops',
  'Framework Name Scope',
  'Source code',
  'Async XLA Ops',
  'TensorFlow Ops',
}


def op_times(profile, module: str) -> tuple[dict[str, float], dict[str, int], float]:
  """Self time (ns) and count per HLO instruction of `module`, and unattributed device time.

  `profile` is a jax.profiler.ProfileData. Device planes (/device:GPU:0, ...) are used when
  they hold events of the module; otherwise the host plane (XLA:CPU runs ops on host threads).
  """

  def stat(event, key):
    for k, v in event.stats:
      if k == key:
        return v
    return None

  planes = [p for p in profile.planes if p.name.startswith('/device:')]
  host = [p for p in profile.planes if p.name.startswith('/host:CPU')]
  times: dict[str, float] = collections.defaultdict(float)
  counts: dict[str, int] = collections.Counter()
  unattributed = 0.0
  for group in (planes, host):
    for plane in group:
      for line in plane.lines:
        if line.name in _DERIVED_LINES:
          continue
        events = [e for e in line.events]
        ops = [(e.start_ns, e.end_ns, stat(e, 'hlo_op'), stat(e, 'hlo_module')) for e in events]
        mine = [
          o
          for o in ops
          if o[2] is not None
          and o[3] is not None
          and (o[3] == module or o[3].startswith(module + '('))
        ]
        if group is planes and not mine:
          # A device line with kernels of no module (memcpy, other programs): not ours.
          continue
        mine.sort(key=lambda o: (o[0], -o[1]))
        stack: list[list] = []  # [end, name, self_ns]
        for start, end, name, _ in mine:
          while stack and stack[-1][0] <= start:
            _, n, self_ns = stack.pop()
            times[n] += self_ns
          if stack:
            stack[-1][2] -= min(end, stack[-1][0]) - start
          stack.append([end, name, end - start])
          counts[name] += 1
        for _, n, self_ns in stack:
          times[n] += self_ns
        if group is planes:
          unattributed += sum(
            e.duration_ns for e in events if stat(e, 'hlo_op') is None and e.duration_ns > 0
          )
    if times:
      break
  return dict(times), dict(counts), unattributed


def summarize(times: dict, counts: dict, infos: dict[str, OpInfo], unattributed: float = 0.0):
  """Per-category totals (ns) and the operations sorted by time."""
  by_cat = dict.fromkeys(CATEGORIES, 0.0)
  rows = []
  for name, ns in times.items():
    info = infos.get(name) or OpInfo('other', '?', 'not in the compiled HLO', '', False)
    by_cat[info.category] += ns
    rows.append((ns, name, counts.get(name, 0), info))
  by_cat['other'] += unattributed
  rows.sort(key=lambda r: -r[0])
  return by_cat, rows


def format_report(by_cat: dict, rows: list, steps: int, wall_s: float, top: int) -> str:
  total = sum(by_cat.values())
  out = [
    f'traced {steps} steps: wall {wall_s / steps * 1e3:.1f} ms/step, '
    f'operation time {total / steps / 1e6:.1f} ms/step',
    '',
    '| category | ms/step | share |',
    '|---|---|---|',
  ]
  for cat in CATEGORIES:
    out.append(f'| {cat} | {by_cat[cat] / steps / 1e6:.2f} | {by_cat[cat] / total:.1%} |')
  out += [
    '',
    '| # | operation | category | ms/step | share | calls/step | what | where |',
    '|---|---|---|---|---|---|---|---|',
  ]
  for i, (ns, name, n, info) in enumerate(rows[:top], 1):
    what = info.opcode + (f' [{info.detail}]' if info.detail else '')
    what += ' (bwd)' if info.backward else ''
    out.append(
      f'| {i} | {name} | {info.category} | {ns / steps / 1e6:.2f} | {ns / total:.1%} | '
      f'{n / steps:g} | {what} | {info.where} |'
    )
  return '\n'.join(out)


def profile_shape(shape: str, steps: int, warmup: int, trace_dir: str) -> dict:
  """Compiles, warms up, traces `steps` steps of the benchmark's train step; the summary."""
  import jax

  b = train_step.build(shape)
  compiled = b.compile()
  hlo = compiled.as_text()
  module = re.match(r'HloModule ([\w.\-]+)', hlo).group(1)
  infos = classify(parse_hlo(hlo))
  state = b.trainer.init()
  for _ in range(max(warmup, 1)):
    state, m = compiled(state, b.batch)
  jax.block_until_ready((state, m))
  t0 = time.perf_counter()
  with jax.profiler.trace(trace_dir):
    for _ in range(steps):
      state, m = compiled(state, b.batch)
    jax.block_until_ready((state, m))
  wall_s = time.perf_counter() - t0
  data = jax.profiler.ProfileData.from_file(find_xspace(trace_dir))
  times, counts, unattributed = op_times(data, module)
  if not times:
    raise RuntimeError(f'the trace in {trace_dir} holds no operation of {module}')
  by_cat, rows = summarize(times, counts, infos, unattributed)
  return {
    'by_category_ns': by_cat,
    'rows': rows,
    'wall_s': wall_s,
    'steps': steps,
    'module': module,
  }


def report_run(workdir: str, top: int) -> str:
  """The report of the steps a training run traced (train/profiling.py wrote them with the
  compiled step's HLO and their wall time into WORKDIR/tb/plugins/profile/)."""
  import json

  import jax

  from core import rundir
  from train import profiling

  where = rundir.RunDir(workdir).profile
  summary_path = os.path.join(where, profiling.SUMMARY)
  if not os.path.isfile(summary_path):
    raise FileNotFoundError(
      f'{workdir} holds no training trace ({summary_path}); train it with '
      "--config.train.profile_steps='START:STOP'"
    )
  with open(summary_path) as f:
    summary = json.load(f)
  with open(os.path.join(where, 'train_step.hlo.txt')) as f:
    infos = classify(parse_hlo(f.read()))
  profile = jax.profiler.ProfileData.from_file(find_xspace(rundir.RunDir(workdir).tensorboard))
  times, counts, unattributed = op_times(profile, summary['module'])
  if not times:
    raise RuntimeError(f'the trace of {workdir} holds no operation of {summary["module"]}')
  by_cat, rows = summarize(times, counts, infos, unattributed)
  first, steps = summary['first'], summary['steps']
  head = f'## {workdir}: steps {first}..{first + steps - 1} of training\n'
  return head + format_report(by_cat, rows, steps, summary['wall_s'], top)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  if _RUN.value:
    try:
      print(report_run(_RUN.value, _TOP.value))
    except (OSError, RuntimeError) as e:
      print(f'error: {e}', file=sys.stderr)
      sys.exit(2)
    return
  if _FLAGS_STEPS() < 1:
    raise app.UsageError('--steps must be >= 1')
  train_step.check_flags()
  # Before JAX starts its backend, which reads XLA_FLAGS once (the flag is ignored on CPU).
  keep = _COMMAND_BUFFERS.value or 'xla_gpu_enable_command_buffer' in os.environ.get(
    'XLA_FLAGS', ''
  )
  train_step.configure_environment(() if keep else (NO_COMMAND_BUFFERS,))
  train_step.check_machine()
  import jax

  print(f'# {jax.devices()[0].device_kind}, jax {jax.__version__}', flush=True)
  for shape in train_step.shapes():
    with tempfile.TemporaryDirectory() as tmp:
      trace_dir = _TRACE_DIR.value or tmp
      r = profile_shape(shape, _FLAGS_STEPS(), flags.FLAGS.warmup, trace_dir)
    print(f'\n## {shape} ({train_step.describe()})')
    print(format_report(r['by_category_ns'], r['rows'], r['steps'], r['wall_s'], _TOP.value))
    sys.stdout.flush()


def _FLAGS_STEPS() -> int:  # noqa: N802 - reads train_step's --steps
  return flags.FLAGS.steps


if __name__ == '__main__':
  app.run(main)
