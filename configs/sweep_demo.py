"""A small sweep on the embedded synthetic data (no downloads; CPU minutes).

  python -m ftjax.sweep --config configs/sweep_demo.py --workdir runs/sweep_demo
  python -m ftjax.report --workdir runs/sweep_demo --out report_demo
"""

import ml_collections

from configs import demo


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
  return config
