"""`train.profile_steps`: a jax.profiler trace of chosen training steps, in the run's TensorBoard
folder (WORKDIR/tb/plugins/profile/<time>/<host>.xplane.pb, what TensorBoard's profile plugin
and xprof read), beside the compiled step's HLO and the traced steps' wall time
(WORKDIR/tb/plugins/profile/train_step.json), so that `python -m benchmarks.profile
--run=WORKDIR` splits the traced time by operation and category like its own benchmark does.

'START:STOP' traces the steps after START up to STOP, numbered as in metrics.jsonl (step 1 is
the first); 'N' is '1:N+1': N steps after the first, which compiles. Each process traces its
own host; a window that began before a resume is not traced again. Tested on local workdirs;
whether jax.profiler writes to a gs:// workdir is not tested here.
"""

import json
import re
import time

from absl import logging

from core import files, rundir

SUMMARY = 'train_step.json'


def window(spec: str, steps: int) -> tuple[int, int] | None:
  """(start, stop) of `spec` for a run of `steps` steps, None for ''; ValueError (one line)."""
  spec = str(spec).strip()
  if not spec:
    return None
  m = re.fullmatch(r'(\d+)|(\d+):(\d+)', spec)
  if not m:
    raise ValueError(f"train.profile_steps={spec!r}: give 'START:STOP' (e.g. '10:13') or a count N")
  start, stop = (1, 1 + int(m[1])) if m[1] else (int(m[2]), int(m[3]))
  if stop <= start:
    raise ValueError(f'train.profile_steps={spec!r}: traces no step (STOP must exceed START)')
  if stop > steps:
    raise ValueError(f'train.profile_steps={spec!r} ends after the last step ({steps})')
  return start, stop


def trace_dir(workdir: str) -> str:
  return rundir.RunDir(workdir).tensorboard


class StepTrace:
  """Starts the trace before step start+1 and stops it once step `stop` has finished."""

  def __init__(self, spec: str, total: int, workdir: str, first_step: int):
    w = window(spec, total)
    self.window = w if w and first_step <= w[0] else None
    self.workdir, self.t0, self.active = workdir, 0.0, False

  def before(self, step: int) -> None:
    """Called before running step index `step` (which becomes step number step + 1)."""
    if self.window and step == self.window[0]:
      import jax  # here, not at the top: validate.py reads `window` without JAX

      jax.profiler.start_trace(trace_dir(self.workdir))
      self.active, self.t0 = True, time.perf_counter()

  def after(self, done: int, outputs, compiled) -> None:
    """Called after dispatching step number `done`; ends the trace after the last one."""
    if not (self.active and done == self.window[1]):
      return
    import jax

    jax.block_until_ready(outputs)
    wall_s = time.perf_counter() - self.t0
    self.close()
    hlo = compiled.as_text()
    module = re.match(r'HloModule ([\w.\-]+)', hlo).group(1)
    steps = self.window[1] - self.window[0]
    where = rundir.RunDir(self.workdir).profile
    files.write_text(files.join(where, 'train_step.hlo.txt'), hlo)
    record = {'steps': steps, 'first': self.window[0] + 1, 'wall_s': wall_s, 'module': module}
    files.write_text(files.join(where, SUMMARY), json.dumps(record, indent=2))
    logging.info('profiled steps %d..%d into %s', self.window[0] + 1, self.window[1], where)

  def close(self) -> None:
    if self.active:
      import jax

      self.active = False
      jax.profiler.stop_trace()
