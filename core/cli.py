"""Command-line plumbing for every entry point: bad input is one line on stderr and exit 2.

absl prints some flag errors over two lines and lets others escape as tracebacks: a config
key typo (ml_collections raises KeyError/AttributeError whose text holds "Did you mean"), a
config file that is missing, does not parse, or whose get_config() raises. `parse_flags` is
an absl `flags_parser` (app.run(main, flags_parser=cli.parse_flags)) that turns all of them
into one line that keeps what ml_collections said.

It lives in core/, under every other package, because data.tokenizer and data.text_corpus are
entry points too.
"""

import os
import sys
from typing import NoReturn

from absl import flags

USAGE_EXIT = 2  # bad input; nothing was written
# Texts of ml_collections' wrappers around the real error of a config file.
# A config file is a user's program: any error in it is bad input, reported in one line.
_ERRORS = (Exception,)
_WRAPPERS = ('Error whilst parsing config file', 'Configuration is not available')


def fail(message: str) -> NoReturn:
  """Prints `error: <message>` (one line) on stderr and exits with status 2."""
  text = ' '.join(line.strip() for line in str(message).splitlines() if line.strip())
  print(f'error: {text}', file=sys.stderr, flush=True)
  sys.exit(USAGE_EXIT)


def define_config_file(name: str, default: str, help_text: str):
  """config_flags.DEFINE_config_file, whose errors are one line too.

  Without --<name>=PATH on the command line, ml_collections loads the default file and applies
  the --<name>.KEY=VALUE overrides of sys.argv while the flag is being defined.
  """
  from ml_collections import config_flags

  try:
    return config_flags.DEFINE_config_file(name, default, help_text)
  except _ERRORS as e:
    fail(describe(e, sys.argv, [f'--{name}={default}']))


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """Parses argv like absl does; any error is one line and exit 2 (see the module doc)."""
  for arg in _config_args(argv, flag_values):
    path = arg.partition('=')[2].partition(':')[0]
    # ml_collections would quietly reuse the previously loaded file's get_config.
    if os.path.isfile(path) and 'get_config' not in open(path, errors='replace').read():
      fail(f'{arg}: {path} defines no get_config(); a config file returns its ConfigDict there')
  try:
    rest = flag_values(argv)
    for name in list(flag_values):
      flag = flag_values[name]
      if hasattr(type(flag), 'config_filename'):
        # A config file that failed to load raises only when the config is first used.
        getattr(flag.value, 'keys', None)
  except _ERRORS as e:
    fail(describe(e, argv, _config_args(argv, flag_values)))
  return rest


def _config_args(argv: list[str], flag_values: flags.FlagValues) -> list[str]:
  """The --<config flag>=PATH arguments (or the default paths) of the config-file flags."""
  out = []
  for name in list(flag_values):
    flag = flag_values[name]
    if name == flag.name and hasattr(type(flag), 'config_filename'):
      given = [a for a in argv if a.startswith(f'--{name}=')]
      out.append(given[-1] if given else f'--{name}={flag.default_as_str or ""}'.replace("'", ''))
  return out


def _message(e: BaseException) -> str:
  msg = e
  while isinstance(msg, BaseException):  # KeyError(msg), AttributeError(KeyError(msg)), ...
    msg = msg.args[0] if len(msg.args) == 1 else str(msg)
  return str(msg)


def _unwrap(e: BaseException) -> BaseException:
  while True:
    inner = e.__cause__ or e.__context__
    if inner is None or not any(w in str(e) for w in _WRAPPERS):
      return e
    e = inner


def describe(e: BaseException, argv: list[str], config_args: list[str] = ()) -> str:
  """One line for an exception raised while parsing flags or loading a config file."""
  e = _unwrap(e)
  text = _message(e)
  where = ' or '.join(config_args) or 'the config file'
  if isinstance(e, SyntaxError):
    return f'{where}: {e.filename} line {e.lineno}: {e.msg}; fix the config file'
  if 'Failed loading config file' in text:
    return f'{where}: no such config file; give the path of a config .py file'
  if isinstance(e, KeyError | AttributeError) and text.startswith(("'", '"')):
    key, _, hint = text.partition('\n')  # "'d_modle'\nDid you mean ...?" (the hint optional)
    bare = key.strip('\'"')
    arg = next((a.split('=')[0] for a in argv if bare in a.split('=')[0].split('.')[1:]), '')
    prefix = f'{arg}: ' if arg else ''
    hint = hint.strip() or f'see {where.partition("=")[2] or "the config file"} for the keys'
    return f'{prefix}the config has no key {key}. {hint}'
  if isinstance(e, flags.Error):
    return text
  return f'{where}: {type(e).__name__}: {text}'
