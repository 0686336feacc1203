"""Test setup: 8 fake CPU devices (a small 'cluster' in one process), quiet logs."""

import os

# Must happen before JAX initializes its backends.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# Prepared datasets shared by all tests (and xdist workers: preparation is locked).
os.environ.setdefault(
  'SCALING_LM_DATA', os.path.join(os.path.dirname(os.path.dirname(__file__)), '.data', 'tfds')
)

import pytest  # noqa: E402
from absl import flags  # noqa: E402


@pytest.fixture(autouse=True, scope='session')
def _absl_flags_parsed():
  """grain and orbax read absl flags; outside app.run they must be marked parsed."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  yield
