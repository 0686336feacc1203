"""Test setup: 8 fake CPU devices (a small 'cluster' in one process), quiet logs.

XLA_FLAGS and JAX_PLATFORMS are set, not defaulted: every test assumes exactly 8 CPU devices,
and an inherited value (a GPU machine's flags, a developer's shell) must not change that.
Prepared datasets live in the user's cache, never in the checkout.
"""

import os

# Must happen before JAX initializes its backends.
os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=8'
os.environ['JAX_PLATFORMS'] = 'cpu'
# One persistent compilation cache for the session's workers and every training process they
# start (children inherit the environment): the same tiny model's steps are compiled by dozens
# of tests, and a cache hit is the same executable, so results are unchanged. It lives in the
# user's cache, never in the checkout.
os.environ['JAX_COMPILATION_CACHE_DIR'] = os.path.join(
  os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')), 'scaling_lm', 'jax_tests'
)
os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0.5'
# Prepared datasets: the user's cache (data/text_corpus.py's default, or SCALING_LM_DATA), shared
# by all tests and xdist workers (preparation is locked); never the checkout.

import pytest  # noqa: E402
from absl import flags  # noqa: E402


@pytest.fixture(autouse=True, scope='session')
def _absl_flags_parsed():
  """grain and orbax read absl flags; outside app.run they must be marked parsed."""
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  yield
