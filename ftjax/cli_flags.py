"""Command-line flag parsing and error reporting shared by ftjax's commands."""

import os
import sys
from typing import Any, Callable

from absl import app, flags
import ml_collections

from ftjax import logging_utils
from ftjax import run as run_lib
from ftjax.data import DataError
from ftjax.loop import TrainingDivergedError


HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "--helpxml")


def parse(argv: list[str]) -> list[str]:
  """absl's flag parser, with an override of a field the config lacks as one error line.

  ml_collections raises a bare KeyError for --config.FIELD=VALUE when FIELD is not in
  the config file (a typo, or a dataset option only another dataset has). --help
  exits 0 (absl's exits 1); a config file that does not exist is one line; library
  logging is quiet (logging_utils.quiet_libraries).
  """
  try:
    rest = flags.FLAGS(argv)
  except SystemExit:
    if any(arg in HELP_FLAGS for arg in argv[1:]):
      sys.exit(0)
    raise
  except (KeyError, AttributeError, OSError):
    _exit_on_missing_config_file(argv)
    _exit_on_missing_field(argv)
    raise
  _exit_on_missing_config_file(argv)
  logging_utils.quiet_libraries()
  return rest


def _exit_on_missing_config_file(argv: list[str]) -> None:
  """ml_collections reports an unreadable config file as a long traceback on first use."""
  given = _flag_argument(argv, "config")
  if "config" in flags.FLAGS and given is not None:
    path = given.split(":", 1)[0]  # configs/base.py:bach,ft passes "bach,ft" to it
    if not os.path.isfile(path):
      print(f"error: --config {path}: no such file; give a config file, e.g. one of "
            f"configs/*.py.", file=sys.stderr)
      sys.exit(2)


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
        print(f"error: {arg}: {where} has no field {name!r}; its fields: {valid}.",
              file=sys.stderr)
        sys.exit(2)
      fields = fields[name]


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
