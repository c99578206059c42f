"""Tiny sweep configs, their command-line form, and results.json files written as a
run writes them, shared by the sweep, launch and report tests."""

import json
import pathlib


from configs import sweep_demo
from ftjax import run as run_lib
from ftjax import sweep

METRICS = ("loss", "map", "accuracy", "auroc", "kappa", "f1")

def tiny_sweep_config(data_dir, strategies=("ft", "lp"), lrs=(1e-3, 1e-4), seeds=(0, 1)):
  """configs/sweep_demo.py shrunk to seconds per run on a CPU."""
  config = sweep_demo.get_config()
  base = config.base
  base.data_dir = str(data_dir)
  base.dataset_options.num_train = 96
  base.dataset_options.num_test = 48
  base.resize, base.crop = 36, 32
  base.batch_size, base.eval_batch_size = 16, 32
  base.num_epochs = 1
  base.progress = False
  base.strategy_options.lp_epochs = 1
  base.strategy_options.rgn_batches = 2
  config.strategies, config.lrs, config.seeds = strategies, lrs, seeds
  return config

def overrides(config) -> list[str]:
  """The tiny config as command-line overrides of configs/sweep_demo.py."""
  b = config.base
  return [f"--config.base.data_dir={b.data_dir}",
          f"--config.base.dataset_options.num_train={b.dataset_options.num_train}",
          f"--config.base.dataset_options.num_test={b.dataset_options.num_test}",
          f"--config.base.resize={b.resize}", f"--config.base.crop={b.crop}",
          f"--config.base.batch_size={b.batch_size}",
          f"--config.base.eval_batch_size={b.eval_batch_size}",
          f"--config.base.num_epochs={b.num_epochs}",
          f"--config.base.strategy_options.rgn_batches={b.strategy_options.rgn_batches}",
          f"--config.base.strategy_options.lp_epochs={b.strategy_options.lp_epochs}",
          f"--strategies={','.join(config.strategies)}",
          f"--lrs={','.join(f'{lr:g}' for lr in config.lrs)}",
          f"--seeds={','.join(map(str, config.seeds))}"]

def write_result(root, spec: sweep.RunSpec, validation: dict, test: dict,
                 main_metrics=("accuracy", "auroc"), identity: dict | None = None
                 ) -> pathlib.Path:
  """A results.json and identity.json as train_and_evaluate writes them, with
  chosen metric values (identity: the run's fields; by default only its place's)."""
  run_dir = spec.directory(root)
  run_dir.mkdir(parents=True, exist_ok=True)
  identity = identity or {"dataset": spec.dataset, "arch": spec.arch,
                          "strategy": spec.strategy, "lr": spec.lr, "seed": spec.seed}
  (run_dir / "identity.json").write_text(json.dumps(
      {"hash": run_lib.identity_hash(identity), "fields": identity}))
  fill = lambda d: {**{m: 0.5 for m in METRICS}, **d, "count": 10}
  (run_dir / "results.json").write_text(json.dumps({
      "dataset": spec.dataset, "arch": spec.arch, "strategy": spec.strategy,
      "lr": spec.lr, "seed": spec.seed, "init": "random", "data_config": "x", "unit": None,
      "main_metrics": list(main_metrics), "best_epoch": 0, "epochs_run": 1,
      "stopped_early": False, "train_seconds": 1.0, "validation": fill(validation),
      "test": fill(test), "device": "cpu", "jax_version": "0"}))
  return run_dir

