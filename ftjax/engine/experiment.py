"""What a run trains: its checked config, the prepared data, the model and the strategy.

`load(config)` validates everything a run needs (config values, arch, strategy,
prepared data, batches per epoch) before any run directory is touched, and
returns an `Experiment` that the single-run and the vmapped multi-run trainers
share. The batch helpers here are the one definition of what a training batch is.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ftjax import run_options, step
from ftjax.engine import evaluation
from ftjax.data import DataError, pipeline
from ftjax.data.prepared import dataset_options, prepared_builder
from ftjax.models import init_variables, load_pretrained, registry
from ftjax.strategies import get_strategy
from ftjax.strategies.registry import Strategy, check_plan

COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}  # run_options.COMPUTE_DTYPES


def check_metric(metric: str) -> None:
  if metric not in run_options.EARLY_STOPPING_METRICS:
    raise ValueError(f"early_stopping_metric must be 'loss' or a metric name, got "
                     f"{metric!r}.")


DEFAULT_CROP = run_options.DEFAULT_CROP


def fit_crop(config: ml_collections.ConfigDict) -> None:
  """Data prepared smaller than the default crop (prepare --resize 32) is cropped at
  its own size: config.crop follows config.resize, said on stderr. A crop the user
  set (any other than the default) is left for check_config to refuse."""
  if (isinstance(config.resize, int) and isinstance(config.crop, int)
      and 0 < config.resize < config.crop == DEFAULT_CROP):
    print(f"config.crop: {config.resize}, the prepared size (config.resize), as it is "
          f"smaller than the default crop {DEFAULT_CROP}; set --config.crop to choose "
          f"another.", file=sys.stderr)
    config.crop = config.resize


def check_config(config: ml_collections.ConfigDict) -> None:
  """Refuses values no run can use, naming the field, before anything starts: each
  field against its entry in `ftjax.run_options`, then the crop against the data."""
  run_options.check(config)
  if 0 < config.resize < config.crop:
    raise ValueError(f"config.crop ({config.crop}) is larger than the prepared images "
                     f"(config.resize={config.resize}): set --config.crop={config.resize} "
                     f"or smaller, or prepare the data with --resize {config.crop} or more.")
  patch = config.arch in registry.ARCHS and registry.patch_size(config.arch)
  if patch and config.crop % patch:
    raise ValueError(f"config.crop must be a multiple of {config.arch}'s patch size "
                     f"{patch} (e.g. {max(patch, round(config.crop / patch) * patch)}), got "
                     f"{config.crop} (set it with --config.crop=VALUE).")


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A validated config with its architecture, strategy, model and data."""

  config: ml_collections.ConfigDict
  arch: registry.Arch
  strategy: Strategy
  info: Any  # ftjax.data.DatasetInfo
  builder: Any  # the prepared tfds builder
  sources: dict[str, Any]  # split -> random-access data source
  steps_per_epoch: int

  @functools.cached_property
  def model(self):
    return self.arch.build(self.info.num_classes)

  @property
  def loss_name(self) -> str:
    return "sigmoid" if self.info.multilabel else "softmax"

  @property
  def compute_dtype(self):
    return COMPUTE_DTYPES[self.config.compute_dtype]

  def strategy_with_lr(self, lr) -> Strategy:
    """The strategy at another (possibly traced) learning rate."""
    return get_strategy(self.config.strategy, self.arch,
                        {**self.config.strategy_options.to_dict(), "lr": lr})

  def initial_variables(self, config: ml_collections.ConfigDict | None = None):
    return initial_variables(config or self.config, self.arch, self.info.num_classes)

  def evaluate(self, variables, split: str, parallel=None) -> dict[str, float]:
    return self.metrics(self.predict(variables, split, parallel))

  def predict(self, variables, split: str, parallel=None) -> evaluation.Predictions:
    return evaluation.predict_split(
        self.model, variables, self.sources[split], batch_size=self.config.eval_batch_size,
        crop=self.config.crop, num_workers=self.config.num_workers, parallel=parallel)

  def metrics(self, predictions: evaluation.Predictions) -> dict[str, float]:
    return evaluation.metrics_of(predictions, self.info.multilabel, self.info.class_names)


def recorded_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """What a run's config.json holds: the config as JSON, with the dataset options it sets."""
  return {**json.loads(config.to_json_best_effort()),
          "dataset_options": dataset_options(config)}


def load(config: ml_collections.ConfigDict) -> Experiment:
  """Checks the config (its crop fitted to small prepared data, `fit_crop`) and opens
  its prepared data; writes nothing."""
  fit_crop(config)
  check_config(config)
  arch = registry.get_arch(config.arch)
  strategy = get_strategy(config.strategy, arch,
                          {**config.strategy_options.to_dict(), "lr": config.lr})
  note = check_plan(config.strategy, strategy.plan, config.num_epochs, strategy.options)
  if note:
    print(note, file=sys.stderr)
  info, builder = prepared_builder(config, arch)
  sources = {split: builder.as_data_source(split) for split in ("train", "validation", "test")}
  return Experiment(config, arch, strategy, info, builder, sources,
                    train_steps_per_epoch(config, info.name, len(sources["train"])))


def initial_variables(config, arch: registry.Arch, num_classes: int):
  if config.init == "pretrained":
    _, variables = load_pretrained(arch, config.weights_dir, num_classes,
                                   rng=jax.random.key(config.seed))
    return variables
  if config.init == "random":
    return init_variables(arch, jax.random.key(config.seed), num_classes)
  raise ValueError(f"config.init must be {' or '.join(map(repr, run_options.INITS))}, got "
                   f"{config.init!r}.")


def train_steps_per_epoch(config, dataset: str, num_records: int) -> int:
  """Batches per training epoch; an error if there are none."""
  steps = pipeline.num_batches(num_records, config.batch_size, config.num_workers)
  if steps == 0:
    split = (f" split over {config.num_workers} workers, which batch their shares apart"
             if config.num_workers > 1 else "")
    raise DataError(f"{dataset}: {num_records} training examples{split}, fewer than one "
                    f"batch of {config.batch_size}; lower config.batch_size"
                    f"{' or config.num_workers' if split else ''}.")
  return steps


def model_variables(state: step.TrainState) -> dict[str, Any]:
  """The state's {'params', 'batch_stats'}: what the model applies and checkpoints keep."""
  return {"params": state.params, "batch_stats": state.batch_stats}


def stack_batches(batches: list[dict[str, np.ndarray]], axis: int = 0
                  ) -> dict[str, np.ndarray]:
  """Images and labels of the batches, each stacked along a new `axis`."""
  return {k: np.stack([b[k] for b in batches], axis) for k in ("image", "label")}


def train_batch(batch: dict[str, np.ndarray], multilabel: bool) -> dict[str, Any]:
  label = batch["label"].astype(np.float32 if multilabel else np.int32)
  return {"image": batch["image"], "label": label}


def epoch_loader(config, source, epoch: int, seed: int | None = None):
  """The shuffled training batches of `epoch` (uint8 crops: the train step
  normalises them on the device). `seed` replaces config.seed (multirun)."""
  return pipeline.make_loader(source, config.batch_size,
                              seed=config.seed if seed is None else seed, epoch=epoch,
                              shuffle=True, drop_remainder=True,
                              transforms=[pipeline.CenterCrop(config.crop)],
                              num_workers=config.num_workers)
