"""One DICOM image as uint8 pixels, the way a viewer shows it.

The rule, in the order of the DICOM grayscale pipeline (PS3.3 C.11):

1. stored values -> modality values: the Modality LUT Sequence when present,
   else ``RescaleSlope * x + RescaleIntercept`` (1 and 0 when absent);
2. modality values -> 0..1: the VOI LUT Sequence when present (its output
   divided by 2**bits - 1), else the first Window Center / Width with the
   VOI LUT Function (LINEAR, LINEAR_EXACT or SIGMOID; PS3.3 C.11.2.1.2), else a
   min-max stretch of the image's own values (a constant image is 0);
3. MONOCHROME1 (white is low) is inverted: 1 - y;
4. uint8 = round-half-to-even(255 * y).

Colour images (SamplesPerPixel 3; YBR is converted to RGB by pydicom) of 8 bits
are kept as they are; more bits are min-max stretched. PALETTE COLOR images go
through their palette (pydicom's ``apply_color_lut``), each entry scaled from its
bits to 0..255. One frame per file.

Values that would give a plausible but wrong image make a bad image instead: a
Rescale Slope of 0 (every pixel the intercept), a non-finite slope, intercept,
window centre or width, or modality values that overflow to Inf.

Compressed transfer syntaxes decode when their pixel handler is installed
(``pip install 'ftjax[dicom_compressed]'``); otherwise the image is a bad image
whose message names that extra. A file whose handler is installed but whose
data does not decode is a damaged file, and its message says so.
Uncompressed files need nothing beyond pydicom.
"""

from __future__ import annotations

import numpy as np

from ftjax.data import validate
from ftjax.data.validate import BadImage

EXTRA = "pip install 'ftjax[dicom_compressed]' (pylibjpeg and its JPEG, JPEG 2000, RLE plugins)"


def read_dicom(path: str) -> np.ndarray:
  """uint8 (H, W) or (H, W, 3) pixels of the DICOM file ``path`` (rule above)."""
  dataset = _open(path)
  pixels = _pixels(dataset)
  if _photometric(dataset) == "PALETTE COLOR":
    return palette(dataset, pixels)
  if int(dataset.get("SamplesPerPixel", 1)) != 1:
    if pixels.dtype == np.uint8:
      return pixels
    return np.rint(_stretch(pixels.astype(np.float64)) * 255.0).astype(np.uint8)
  shown = voi(dataset, modality(dataset, pixels))
  if _photometric(dataset) == "MONOCHROME1":
    shown = 1.0 - shown
  return np.rint(np.clip(shown, 0.0, 1.0) * 255.0).astype(np.uint8)


def _photometric(dataset) -> str:
  return str(dataset.get("PhotometricInterpretation", "")).strip().upper()


def palette(dataset, pixels: np.ndarray) -> np.ndarray:
  """PALETTE COLOR indices -> uint8 RGB through the file's palette."""
  from pydicom.pixels import apply_color_lut
  try:
    rgb = apply_color_lut(pixels, dataset)
    bits = int(dataset.RedPaletteColorLookupTableDescriptor[2])
  except (ValueError, KeyError, AttributeError, IndexError, TypeError) as exc:
    raise BadImage(f"a PALETTE COLOR image whose palette cannot be applied ({exc})") from None
  return np.rint(rgb.astype(np.float64) * (255.0 / float(2 ** bits - 1))).astype(np.uint8)


def _open(path: str):
  import pydicom
  from pydicom.errors import InvalidDicomError
  try:
    dataset = pydicom.dcmread(path)
  except InvalidDicomError as exc:
    raise BadImage(f"not a DICOM file ({exc})") from None
  if "PixelData" not in dataset:
    raise BadImage("a DICOM file without pixel data (a report or structured document?)")
  validate.check_decoded_size(int(dataset.get("Columns", 0)), int(dataset.get("Rows", 0)))
  frames = int(dataset.get("NumberOfFrames", 1) or 1)
  if frames != 1:
    raise BadImage(f"a DICOM file of {frames} frames; store one frame per file")
  return dataset


def _pixels(dataset) -> np.ndarray:
  syntax = dataset.file_meta.get("TransferSyntaxUID")
  try:
    return dataset.pixel_array
  except (RuntimeError, NotImplementedError, ValueError, OSError) as exc:
    if syntax is not None and syntax.is_compressed and not _decodable(syntax):
      raise BadImage(f"compressed as {syntax.name} ({syntax}), which needs a DICOM pixel "
                     f"handler that is not installed: {EXTRA}") from None
    reason = str(exc).strip().splitlines()[-1].strip() if str(exc).strip() else type(exc).__name__
    compressed = f" compressed as {syntax.name}" if syntax is not None and syntax.is_compressed \
        else ""
    raise BadImage(f"cannot decode the DICOM pixel data{compressed}: the file is damaged "
                   f"({reason})") from None


def _decodable(syntax) -> bool:
  """Whether a pixel handler for ``syntax`` is installed."""
  from pydicom.pixels.decoders.base import get_decoder
  try:
    return get_decoder(syntax).is_available
  except NotImplementedError:  # a syntax pydicom has no decoder for at all
    return False


def _lut(item, values: np.ndarray) -> tuple[np.ndarray, int]:
  """A LUT Sequence item applied to ``values``; (output, bits of an output entry)."""
  entries, first, bits = (int(v) for v in item.LUTDescriptor)
  entries = entries or 65536  # 0 means 2**16 (PS3.3 C.11.1.1)
  data = item.LUTData
  table = (np.frombuffer(data, "<u2" if bits > 8 else "u1") if isinstance(data, bytes)
           else np.asarray(data if isinstance(data, (list, tuple)) else [data]))
  if table.size < entries:
    raise BadImage(f"a LUT of {table.size} entries where its descriptor says {entries}")
  index = np.clip(np.rint(values).astype(np.int64) - first, 0, entries - 1)
  return table[index].astype(np.float64), bits


def modality(dataset, pixels: np.ndarray) -> np.ndarray:
  """Stored values -> modality values (float64)."""
  if "ModalityLUTSequence" in dataset and len(dataset.ModalityLUTSequence):
    return _lut(dataset.ModalityLUTSequence[0], pixels)[0]
  slope = _number(dataset, "RescaleSlope", 1.0)
  intercept = _number(dataset, "RescaleIntercept", 0.0)
  if slope == 0:
    raise BadImage("Rescale Slope is 0, which maps every pixel to the intercept (a "
                   "damaged header)")
  with np.errstate(over="ignore", invalid="ignore"):
    values = pixels.astype(np.float64) * slope + intercept
  if not np.isfinite(values).all():
    raise BadImage(f"Rescale Slope {slope:g} and Intercept {intercept:g} overflow the "
                   "pixel values to Inf (a damaged header)")
  return values


def _number(dataset, keyword: str, default: float | None) -> float | None:
  """The first value of a (possibly multi-valued) numeric tag, ``default`` when
  absent or empty; a value that is not a finite number is a damaged header."""
  value = dataset.get(keyword)
  if not isinstance(value, (int, float, str)) and value is not None:
    value = value[0] if len(value) else None  # a multi-valued tag: its first value
  if value is None or value == "":
    return default
  try:
    number = float(value)
  except (TypeError, ValueError):
    raise BadImage(f"{keyword} {value!r} is not a number (a damaged header)") from None
  if not np.isfinite(number):
    raise BadImage(f"{keyword} is {number:g}, not a finite number (a damaged header)")
  return number


def voi(dataset, values: np.ndarray) -> np.ndarray:
  """Modality values -> 0..1 (VOI LUT, else window, else min-max)."""
  if "VOILUTSequence" in dataset and len(dataset.VOILUTSequence):
    out, bits = _lut(dataset.VOILUTSequence[0], values)
    return out / float(2 ** bits - 1)
  center = _number(dataset, "WindowCenter", None)
  width = _number(dataset, "WindowWidth", None)
  if center is not None and width is not None:
    function = str(dataset.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    return window(values, center, width, function)
  return _stretch(values)


def window(x: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
  """PS3.3 C.11.2.1.2's window functions, scaled to 0..1."""
  if function == "SIGMOID" and width > 0:
    return 1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))
  if function == "LINEAR_EXACT" and width > 0:
    return np.clip((x - center) / width + 0.5, 0.0, 1.0)
  if function == "LINEAR" and width >= 1:
    if width == 1:  # the window is a threshold
      return (x > center - 0.5).astype(np.float64)
    return np.clip((x - (center - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
  raise BadImage(f"window width {width:g} with VOI LUT Function {function}: not a valid "
                 "window (LINEAR needs a width of at least 1, the others above 0)")


def _stretch(values: np.ndarray) -> np.ndarray:
  low, high = float(values.min()), float(values.max())
  if high <= low:
    return np.zeros_like(values, np.float64)
  return (values - low) / (high - low)
