"""Command-line flag parsing and error reporting shared by ftjax's commands."""

import errno
import os
import sys
from typing import Any, Callable

from absl import app, flags, logging
import ml_collections

from ftjax import faults
from ftjax import run as run_lib
from ftjax.data import DataError
from ftjax.engine.loop import TrainingDivergedError


def parse(argv: list[str]) -> list[str]:
  """absl's flag parser, with an override of a field the config lacks as one error line.

  ml_collections raises a bare KeyError for --config.FIELD=VALUE when FIELD is not in
  the config file (a typo, or a dataset option only another dataset has).
  """
  try:
    return flags.FLAGS(argv)
  except (KeyError, AttributeError):
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
    raise


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
  # Orbax and TFDS log every checkpoint and dataset load at INFO; the run's own
  # output is printed.
  logging.set_verbosity(logging.ERROR)
  config = flags.FLAGS.config
  if config is None:
    raise app.UsageError(f"--config is required, e.g. --config {example}")
  verbose = os.environ.get("FTJAX_VERBOSE") == "1"  # tracebacks for bug reports
  try:
    return run(config)
  except KeyboardInterrupt:
    if verbose:
      raise
    # Saves are atomic and verified on restore, as after a kill: nothing half-written
    # is resumed from.
    faults.interrupted("interrupted; run the same command again to resume.",
                       abandon_threads=True)
  except (DataError, FileNotFoundError, ValueError, TrainingDivergedError) as error:
    if verbose:
      raise
    if not faults.no_space(error):
      print(f"error: {error}", file=sys.stderr)
      sys.exit(1)
    _workdir_error(errno.ENOSPC, None)  # a library's words for a full disk
  except OSError as error:
    # Disk full, read-only or vanished workdir in the middle of a run: the last
    # good checkpoint is intact (saves are atomic), so rerunning resumes.
    if verbose or error.errno not in run_lib.WORKDIR_FIXES:
      raise
    _workdir_error(error.errno, error.filename)


def _workdir_error(code: int, where: str | None) -> None:
  where = where or getattr(flags.FLAGS, "workdir", None) or "the workdir"
  print(f"error: {where}: {os.strerror(code)}; {run_lib.WORKDIR_FIXES[code]}. The last good "
        "checkpoint is kept: rerun the same command to resume.", file=sys.stderr)
  sys.exit(1)
