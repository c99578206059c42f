"""The one error type every data problem is reported with."""

from __future__ import annotations


class DataError(ValueError):
  """Bad or missing input data; the message names the file and the fix."""
