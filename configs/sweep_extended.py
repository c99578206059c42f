"""The paper's grid plus six strategies researchers compare today, on any datasets.

  python -m ftjax.sweep --config configs/sweep_extended.py --workdir runs/extended
  python -m ftjax.sweep --config configs/sweep_extended.py:knee_xr --workdir runs/knee_ext
  python -m ftjax.report --workdir runs/extended --out report_extended

The argument after ':' is a comma-separated list of datasets (built-in names or
your own, by the name they were prepared under); without it, the paper's eight.
Strategies: the paper's eight, then llrd, bitfit, surgical, wise_ft, knn and
bss (ftjax/strategies/, one module per family). knn trains nothing and has no
learning rate: the sweep runs it once per seed. The report shows the new
strategies beside the paper's, with no published value for them.
"""

import ml_collections

from configs import base, sweep_paper
from ftjax import launch

EXTENDED_STRATEGIES = ("llrd", "bitfit", "surgical", "wise_ft", "knn", "bss")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  datasets = tuple(d.strip() for d in arg.split(",") if d.strip()) if arg else (
      sweep_paper.DATASETS)
  config = ml_collections.ConfigDict()
  config.base = base.get_config(f"{datasets[0]},ft")
  config.base.dataset_options = base.dataset_options(*datasets)
  config.base.progress = False  # the sweep shows one bar over runs
  config.datasets = datasets
  config.archs = sweep_paper.ARCHS
  config.strategies = sweep_paper.STRATEGIES + EXTENDED_STRATEGIES
  config.lrs = (1e-3, 1e-4, 1e-5)
  config.seeds = (0, 1, 2)
  # launcher (local | slurm), slurm resources, compilation cache, runs per GPU.
  launch.add_cluster_fields(config)
  return config
