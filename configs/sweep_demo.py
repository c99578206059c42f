"""A small sweep on the embedded synthetic data (no downloads; CPU minutes).

  python -m ftjax.sweep --config configs/sweep_demo.py --workdir runs/sweep_demo
  python -m ftjax.report --workdir runs/sweep_demo --out report_demo
"""

import ml_collections

from configs import demo
from ftjax import launch


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.base = demo.get_config()
  config.base.progress = False
  config.base.num_epochs = 3
  config.datasets = ("synthetic",)
  config.archs = ("resnet18",)
  config.strategies = ("ft", "lp", "lp_ft", "auto_rgn")
  config.lrs = (1e-3, 1e-4)
  config.seeds = (0, 1)
  # launcher (local | slurm), slurm resources, compilation cache, runs per GPU.
  launch.add_cluster_fields(config)
  return config
