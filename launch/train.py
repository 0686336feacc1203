"""Train one model: python -m launch.train --config=experiments/configs/default.py --workdir=DIR.

Any config value can be overridden with --config.<key>=<value> (an unknown key is an error).
Bad input of any kind (flags, config file, config values, data) is one `error:` line on stderr
and exit status 2, before anything is compiled or written (train/validate.py, data/cli.py).
Rerunning the same command resumes from the newest checkpoint in DIR. On several processes
(Cloud TPU VM, SLURM, or explicit --coordinator_address/--num_processes/--process_id) JAX's
distributed runtime is initialized first.

Exit status: 0 done (or stopped by --stop_after_step); 2 bad input; 75 preempted by SIGTERM or
SIGINT after saving a checkpoint (rerun the same command); 65 diverged (non-finite loss or
gradient norm; the last good checkpoint is kept); 74 a checkpoint could not be written.
"""

import sys

from absl import app, flags, logging

from core import cli

_CONFIG = cli.define_config_file('config', 'experiments/configs/default.py', 'Config file.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Run directory (local or gs://).', required=True)
_COORD = flags.DEFINE_string('coordinator_address', '', 'host:port of process 0 (multi-process).')
_NPROC = flags.DEFINE_integer('num_processes', 0, 'Number of processes (0: auto-detect).')
_PID = flags.DEFINE_integer('process_id', -1, 'This process (-1: auto-detect).')
_TIMEOUT = flags.DEFINE_integer('distributed_timeout_s', 300, 'Seconds to wait for the others.')
_STOP = flags.DEFINE_integer(
  'stop_after_step',
  0,
  'End this invocation after this step with a checkpoint (0: run to the end).',
  lower_bound=0,
)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    cli.fail(f'unexpected arguments {argv[1:]}; give every setting as --flag=value')
  # Imported here so that --help and flag errors do not pay for importing JAX.
  from core import files
  from train import distributed, loop, metrics, stops

  metrics.quiet_library_logs()
  distributed.configure_backend(_CONFIG.value)
  distributed.initialize(_COORD.value, _NPROC.value, _PID.value, _TIMEOUT.value)
  import jax

  if jax.process_index() != 0:
    logging.set_verbosity(logging.WARNING)
  try:
    distributed.check_workdir_access(_WORKDIR.value)
    prepared = loop.prepare(_CONFIG.value, _WORKDIR.value)
  except (ValueError, OSError) as e:  # bad input: one clear line, nothing compiled or written
    cli.fail(str(e))
  try:  # the first write, once everything is known to be valid
    files.makedirs(_WORKDIR.value)
  except OSError as e:
    cli.fail(f'cannot create --workdir={_WORKDIR.value}: {e.strerror or e}; choose another')
  try:
    with metrics.log_to_file(_WORKDIR.value):
      summary = loop.run(prepared, stop_at=_STOP.value or None)
  except stops.Stopped as e:
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)
  if summary is None:
    logging.info('stopped after step %d; rerun the same command to continue', _STOP.value)
    return
  logging.info(
    'done: final eval loss %.4f ± %.4f (%.3f bits/byte)',
    summary.final_eval_loss,
    summary.final_eval_loss_sem,
    summary.final_eval_bpb,
  )


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
