"""The study on your own dataset: strategies x learning rates x seeds, from random init
or ImageNet weights.

  python -m ftjax.sweep --config configs/sweep_own.py:knee_xr,resnet50 --workdir runs/knee
  python -m ftjax.report --workdir runs/knee --out report_knee

The argument after ':' is 'dataset[,arch]': the --name the dataset was prepared
under (python -m ftjax.data prepare --dataset folder --name knee_xr ...) and the
architecture (default resnet50). Subsets on the command line: --strategies ft,lp_ft
--lrs 1e-4 --seeds 0; --config.base.init=random without ImageNet weights.
"""

import ml_collections

from configs import base
from ftjax import launch
from ftjax.strategies.registry import PAPER_STRATEGIES


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  parts = (arg or "").split(",")
  if not parts[0] or len(parts) > 2:
    raise ValueError(f"configs/sweep_own.py:{arg}: expected 'dataset[,arch]', the name "
                     "your dataset was prepared under, e.g. configs/sweep_own.py:knee_xr.")
  dataset, arch = parts[0], (parts[1] if len(parts) == 2 else "resnet50")
  config = ml_collections.ConfigDict()
  config.base = base.get_config(f"{dataset},ft,{arch}")
  config.base.progress = False
  config.datasets = (dataset,)
  config.archs = (arch,)
  # The paper's eight; configs/sweep_extended.py:<dataset> adds six more.
  config.strategies = PAPER_STRATEGIES
  config.lrs = (1e-3, 1e-4, 1e-5)
  config.seeds = (0, 1, 2)
  # launcher (local | slurm), slurm resources, compilation cache, runs per GPU.
  launch.add_cluster_fields(config)
  return config
