"""The run's options: one typed table for configs/base.py (the defaults), the checks
before a run starts (`check`) and `python -m ftjax.train --help` (the docs).

The dataset, architecture and strategy (and their own options) are not here: they come
from the config file's argument (configs/base.py:dataset,strategy[,arch]) and from the
dataset's and strategy's own tables.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from ftjax import metrics
from ftjax.options import check_options, docs, option

COMPUTE_DTYPES = ("float32", "bfloat16")
INITS = ("pretrained", "random")
EARLY_STOPPING_METRICS = ("loss", *metrics.METRICS)
DEFAULT_CROP = 224


@dataclasses.dataclass(frozen=True)
class RunOptions:
  """Every scalar field of a run's config (section 3.6 of the paper for the defaults)."""
  data_dir: str = option("data", "prepared datasets (python -m ftjax.data prepare)")
  init: str = option("pretrained", "the backbone's start: converted ImageNet weights or "
                     "random", choices=INITS)
  weights_dir: str = option("weights", "converted ImageNet weights (python -m weights_port)")
  lr: float = option(1e-4, "Adam's learning rate (the paper's grid: 1e-3, 1e-4, 1e-5)")
  batch_size: int = option(64, "training batch", minimum=1)
  eval_batch_size: int = option(128, "evaluation batch", minimum=1)
  num_epochs: int = option(50, "most epochs trained", minimum=1)
  patience: int = option(5, "early stopping: epochs without improvement, counted in the "
                         "plan's last phase", minimum=1)
  early_stopping_metric: str = option("loss", "validation loss, or one of the five metrics",
                                      choices=EARLY_STOPPING_METRICS)
  seed: int = option(0, "weights of the new head, data order, dropout (the paper's seeds: "
                     "0, 1, 2)", minimum=0)
  resize: int = option(0, "the prepared shorter side; 0: the architecture's (232 "
                       "ResNet-50+, 256 others)", minimum=0)
  crop: int = option(DEFAULT_CROP, "centre crop side; follows resize when the data is "
                     "prepared smaller", minimum=1)
  compute_dtype: str = option("float32", "compute dtype (float32 parameters either way)",
                              choices=COMPUTE_DTYPES)
  num_workers: int = option(0, "grain worker processes", minimum=0)
  prefetch: int = option(2, "training batches copied to the device ahead of use", minimum=0)
  cache_features: bool = option(False, "LP with frozen BN: train the head on cached "
                                "features", choices=(False, True))
  progress: bool = option(True, "tqdm progress bars (on a terminal)", choices=(False, True))


INTEGER_FIELDS = tuple(f.name for f in dataclasses.fields(RunOptions) if f.type == "int")


def defaults() -> dict[str, Any]:
  """field -> default, in the table's order (configs/base.py sets them)."""
  return {f.name: f.default for f in dataclasses.fields(RunOptions)}


def field_docs() -> dict[str, str]:
  return docs(RunOptions)


def help_text() -> str:
  """The fields and their docs, for --help."""
  return "\n".join(f"  --config.{name}: {doc}" for name, doc in field_docs().items())


def check(config: Any) -> None:
  """ValueError naming the first field of `config` the table refuses, and how to set it."""
  for name in INTEGER_FIELDS:
    value = config[name]
    if not isinstance(value, int) or isinstance(value, bool):
      _refuse(name, value, "an integer")
  lr = config["lr"]
  if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
    _refuse("lr", lr, "a positive number (the paper's grid: 1e-3, 1e-4, 1e-5)")
  try:
    check_options(RunOptions(**{name: config[name] for name in defaults()}))
  except ValueError as error:
    name = str(error).split(" ", 1)[0]
    raise ValueError(f"config.{error} Set it with --config.{name}=VALUE.") from None


def _refuse(name: str, value: Any, requirement: str) -> None:
  raise ValueError(f"config.{name} must be {requirement}, got {value!r} "
                   f"(set it with --config.{name}=VALUE).")
