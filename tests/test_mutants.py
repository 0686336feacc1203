"""The planted-bug list stays runnable: every mutant's anchor is in its file exactly once, and
every test it names exists. (Whether each is caught is checked after the suite, by .ci/run's
`python -m tests.mutants --ci`; docs/MUTANTS.md.)"""

import os
import re

import pytest

from tests import mutants


@pytest.mark.parametrize('mutant', mutants.MUTANTS, ids=[m[0] for m in mutants.MUTANTS])
def test_anchor_is_unique_and_named_tests_exist(mutant):
  name, path, old, new, selection = mutant
  assert old != new, name
  with open(os.path.join(mutants.REPO, path)) as f:
    assert f.read().count(old) == 1, f'{name}: re-anchor it, {path} no longer holds {old!r} once'
  for node in selection:
    file, _, test = node.partition('::')
    with open(os.path.join(mutants.REPO, file)) as f:
      source = f.read()
    function = test.split('[')[0]
    assert re.search(rf'^def {re.escape(function)}\(', source, re.M), f'{name}: no {node}'


def test_there_are_at_least_thirty_five():
  assert len(mutants.MUTANTS) >= 35
  assert len({m[0] for m in mutants.MUTANTS}) == len(mutants.MUTANTS)
