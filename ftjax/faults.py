"""Failures from outside the program (a full disk, Ctrl-C), told in one line.

Libraries report a full disk in their own words: Python's OSError(ENOSPC),
tfds's `RuntimeError: Failed to finalize writing of split ...` around the
array_record writer's error, orbax/tensorstore's `RESOURCE_EXHAUSTED` status.
`no_space` recognises each, through the chain of causes.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import NoReturn

INTERRUPTED_STATUS = 130  # 128 + SIGINT, what a shell reports for Ctrl-C
_NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_NO_SPACE_TEXTS = ("no space left on device", "disk quota exceeded")


def _chain(exc: BaseException):
  """``exc`` and its causes and contexts (each once)."""
  seen = set()
  while exc is not None and id(exc) not in seen:
    seen.add(id(exc))
    yield exc
    exc = exc.__cause__ or exc.__context__


def no_space(exc: BaseException, *, writing: bool = False) -> bool:
  """Whether ``exc`` (or a cause) says the disk is full. ``writing``: the failure was
  a write, so a RESOURCE_EXHAUSTED status is the disk's (elsewhere it may be memory)."""
  for link in _chain(exc):
    if isinstance(link, OSError) and link.errno in _NO_SPACE_ERRNOS:
      return True
    text = str(link).lower()
    if any(t in text for t in _NO_SPACE_TEXTS) or (writing and "resource_exhausted" in text):
      return True
  return False


def interrupted(message: str, *, abandon_threads: bool = False) -> NoReturn:
  """Ctrl-C: one line on stderr and exit status 130, no traceback.

  ``abandon_threads``: exit at once, as a kill would, leaving background threads (an
  orbax save in flight) unfinished; else they fail at interpreter shutdown, each with
  its traceback. Their half-written output must be as safe as after a kill.
  """
  print(message, file=sys.stderr, flush=True)
  if abandon_threads:
    sys.stdout.flush()
    os._exit(INTERRUPTED_STATUS)  # pylint: disable=protected-access
  sys.exit(INTERRUPTED_STATUS)
