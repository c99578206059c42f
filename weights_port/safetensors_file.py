"""Read `.safetensors` state dicts (timm's Hugging Face files) into numpy, without torch.

The format is a JSON header of tensor names, dtypes, shapes and byte ranges,
then the bytes. The `safetensors` package checks the header (its size, that
the ranges are in the file, do not overlap and cover it) before reading any
tensor, so a hostile header cannot make it allocate more than the file holds;
every failure becomes one SafetensorsFormatError line naming the file.
"""

from __future__ import annotations

import os

import numpy as np

SUFFIX = ".safetensors"


class SafetensorsFormatError(ValueError):
  pass


def is_safetensors(path: str | os.PathLike[str]) -> bool:
  return os.fspath(path).endswith(SUFFIX)


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
  """name -> numpy array of every tensor in the file."""
  from safetensors import SafetensorError  # pylint: disable=import-outside-toplevel
  from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel

  path = os.fspath(path)
  try:
    return dict(load_file(path))
  except SafetensorError as error:
    detail = str(error).replace("Error while deserializing header: ", "")
    raise SafetensorsFormatError(
        f"{path}: not a readable .safetensors file ({detail}): the download is incomplete "
        f"or the file is not a state dict. Download it again.") from None
  except TypeError as error:  # a dtype numpy has no type for (bfloat16)
    raise SafetensorsFormatError(
        f"{path}: holds tensors numpy cannot read ({error}): save the state dict in "
        f"float32 (e.g. with safetensors.torch.save_file after .float()).") from None
