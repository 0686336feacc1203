"""A checkpoint that cannot be written stops the run at once, keeping the previous checkpoints.

The failure is real: the file-size limit (RLIMIT_FSIZE, which binds root too) is lowered below
the size of a checkpoint's array data, so the save's writes fail with EFBIG.
"""

import resource
import signal

import pytest

from tests.test_divergence import saved_steps, strict_records
from tests.test_train import assert_trees_equal, final_params, tiny_config, train
from train import stops


@pytest.fixture
def small_files():
  """Files may not grow past 64 KiB (metrics and logs fit; a checkpoint does not)."""
  old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
  old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill

  def limit():
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, old_limit[1]))

  yield limit
  resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
  signal.signal(signal.SIGXFSZ, old_handler)


@pytest.mark.parametrize('async_save', [True, False])
def test_failed_save_stops_the_run_and_keeps_the_previous_checkpoint(
  tmp_path, small_files, async_save
):
  config = tiny_config(**{'checkpoint.async_save': async_save, 'log_every': 1})
  train(config, tmp_path, stop_at=2)
  before = final_params(tmp_path, 2)
  small_files()
  with pytest.raises(stops.SaveFailed) as e:
    train(config, tmp_path)
  msg = str(e.value)
  assert e.value.exit_code == stops.EXIT_SAVE_FAILED
  assert '\n' not in msg and 'step 4' in msg and 'kept checkpoints: [2]' in msg
  assert saved_steps(tmp_path) == [2]
  assert_trees_equal(before, final_params(tmp_path, 2))
  last = max(r['step'] for r in strict_records(tmp_path) if r['kind'] == 'train')
  assert last <= 6  # a background failure is seen at the latest when the next save starts
