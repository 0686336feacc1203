"""Preemption: SIGTERM or SIGINT end the run at a step every process agrees on.

One process: a handler notes the signal; the loop finishes the step it is on, saves a
checkpoint and stops. Several processes: JAX's preemption service (on by default with
`jax.distributed`) catches SIGTERM on any of them, agrees on a step, and
`reached_preemption_sync_point` turns True at that same step everywhere; SIGINT is forwarded
to it as SIGTERM. A second signal of the same kind ends the process at once (as SIGKILL would:
the rerun resumes from the previous checkpoint).
"""

import os
import signal

import jax
from absl import logging
from jax.experimental import multihost_utils

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Watch:
  """Installs the handlers on creation; `close()` puts the previous ones back."""

  def __init__(self):
    self.received = None  # name of the signal this process got, if any
    self._multi = jax.process_count() > 1
    self._sync = self._multi
    self._previous = {}
    for sig in _SIGNALS:
      if self._multi and sig == signal.SIGTERM:
        continue  # JAX's own handler (the preemption service) takes SIGTERM
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: leave signals alone
        break

  def _handle(self, signum, frame) -> None:
    del frame
    self.received = signal.Signals(signum).name
    signal.signal(signum, signal.SIG_DFL)  # a second one ends the process at once
    if self._multi and self._sync:
      os.kill(os.getpid(), signal.SIGTERM)  # into JAX's preemption service

  def reached(self, step: int) -> bool:
    """True at the step where this run must save and stop (the same step on every process)."""
    if self._sync:
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError:  # jax_enable_preemption_service is off
        logging.warning('JAX preemption service is off: SIGTERM ends the run without a save')
        self._sync = False
    return not self._multi and self.received is not None

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
