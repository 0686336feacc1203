"""Why a run ended before train.steps: one exception a reason, with the exit code a scheduler
reads. str(e) is the one line printed on the console.

  75 (EX_TEMPFAIL) preempted by SIGTERM/SIGINT: a checkpoint was saved; rerun the same command;
  65 (EX_DATAERR)  diverged: non-finite loss/gradients; non-finite parameters are never saved;
  74 (EX_IOERR)    a checkpoint could not be written; the previous checkpoints are kept.
"""

EXIT_PREEMPTED, EXIT_DIVERGED, EXIT_SAVE_FAILED = 75, 65, 74


class Stopped(Exception):
  """The run ended before train.steps."""

  exit_code = 1


class Preempted(Stopped):
  exit_code = EXIT_PREEMPTED


class Diverged(Stopped):
  exit_code = EXIT_DIVERGED


class SaveFailed(Stopped):
  exit_code = EXIT_SAVE_FAILED
