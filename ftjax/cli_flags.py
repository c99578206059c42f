"""Command-line flag parsing and error reporting shared by ftjax's commands."""

import os
import re
import sys
from typing import Any, Callable, NoReturn

from absl import app, flags
import ml_collections

from ftjax import logging_utils
from ftjax import run as run_lib
from ftjax.data import DataError
from ftjax.engine.loop import TrainingDivergedError

# What ml_collections makes of a config file's refused argument: the traceback of
# get_config as the flag error's text, ending with the one-line refusal.
_REFUSED_ARGUMENT = re.compile(r"^ftjax\.names\.UnknownName: (.+)$", re.MULTILINE)
_NO_ARGUMENT = re.compile(r"get_config\(\) takes 0 positional arguments")


def usage_error(message: str) -> NoReturn:
  """A command line that cannot run: one `error:` line, exit status 2."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def parse(argv: list[str]) -> list[str]:
  """absl's flag parser, with a bad config file, a bad config file argument or an
  override of a field the config lacks as one error line.

  ml_collections raises a bare KeyError for --config.FIELD=VALUE when FIELD is not in
  the config file (a typo, or a dataset option only another dataset has), and wraps a
  config file's refusal of its argument (configs/base.py:resnet18,ft) in a traceback.
  --help exits 0 (absl's exits 1); library logging is quiet
  (logging_utils.quiet_libraries).
  """
  try:
    rest = flags.FLAGS(argv)
  except SystemExit:
    if any(arg in HELP_FLAGS for arg in argv[1:]):
      sys.exit(0)
    raise
  except flags.IllegalFlagValueError as error:
    _exit_on_missing_config_file(argv)
    refused = _REFUSED_ARGUMENT.search(str(error))
    if refused:
      usage_error(refused.group(1))
    if _NO_ARGUMENT.search(str(error)):
      usage_error(f"{str(error).split(': ', 1)[0]}: this config file takes no argument "
                  f"after ':'.")
    raise
  except (KeyError, AttributeError, OSError):
    _exit_on_missing_config_file(argv)
    _exit_on_missing_field(argv)
    raise
  _exit_on_missing_config_file(argv)
  _check_config_loaded(argv)
  logging_utils.quiet_libraries()
  return rest


def _exit_on_missing_config_file(argv: list[str]) -> None:
  """ml_collections reports an unreadable config file as a long traceback on first use."""
  given = _flag_argument(argv, "config")
  if "config" in flags.FLAGS and given is not None:
    path = given.split(":", 1)[0]  # configs/base.py:bach,ft passes "bach,ft" to it
    if not os.path.isfile(path):
      usage_error(f"--config {path}: no such file; give a config file, e.g. one of "
                  f"configs/*.py.")


def _exit_on_missing_field(argv: list[str]) -> None:
  """The field of --config.FIELD=VALUE that the config file lacks, as one line."""
  for arg in argv[1:]:
    root, *path = arg.lstrip("-").partition("=")[0].split(".")
    if not path or root not in flags.FLAGS:
      continue
    fields = flags.FLAGS[root].parser.parse(_flag_argument(argv, root))
    for depth, name in enumerate(path):
      if not hasattr(fields, "keys") or name not in fields:
        where = ".".join([root, *path[:depth]])
        valid = ", ".join(sorted(fields.keys())) if hasattr(fields, "keys") else "none"
        usage_error(f"{arg}: {where} has no field {name!r}; its fields: {valid}.")
      fields = fields[name]


def _check_config_loaded(argv: list[str]) -> None:
  """A --config file that cannot be loaded (missing, unreadable) as one error line:
  ml_collections defers that error to the config's first use, as a traceback."""
  if "config" not in flags.FLAGS or flags.FLAGS.config is None:
    return
  try:
    flags.FLAGS.config.get("base")  # any use of a config that failed to load raises
  except OSError as error:
    reason = str(error).strip().splitlines()[-1].strip()
    usage_error(f"--config={_flag_argument(argv, 'config')}: the config file cannot be "
                f"loaded ({reason}).")


def _flag_argument(argv: list[str], name: str) -> str | None:
  """The value given to --name on the command line (--name=V or --name V)."""
  for i, arg in enumerate(argv):
    if arg.lstrip("-").startswith(f"{name}="):
      return arg.partition("=")[2]
    if arg.lstrip("-") == name and i + 1 < len(argv):
      return argv[i + 1]
  return None


def run_cli(argv, example: str, run: Callable[[ml_collections.ConfigDict], Any]) -> Any:
  """The --config flag's config handed to `run`; a user error is one `error:` line and
  exit status 1 (shared by the training commands). FTJAX_VERBOSE=1 shows tracebacks."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config = flags.FLAGS.config
  if config is None:
    raise app.UsageError(f"--config is required, e.g. --config {example}")
  verbose = os.environ.get("FTJAX_VERBOSE") == "1"  # tracebacks for bug reports
  try:
    return run(config)
  except (DataError, FileNotFoundError, ValueError, TrainingDivergedError) as error:
    if verbose:
      raise
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
  except OSError as error:
    # Disk full, read-only or vanished workdir in the middle of a run: the last
    # good checkpoint is intact (saves are atomic), so rerunning resumes.
    if verbose or error.errno not in run_lib.WORKDIR_FIXES:
      raise
    print(f"error: {error.filename or 'the workdir'}: {os.strerror(error.errno)}; "
          f"{run_lib.WORKDIR_FIXES[error.errno]}. The last good checkpoint is kept: rerun "
          f"the same command to resume.", file=sys.stderr)
    sys.exit(1)
