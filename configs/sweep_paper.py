"""The paper's grid (section 3.6): 8 datasets x 3 archs x 8 strategies x 3 lrs x 3 seeds.

  python -m ftjax.sweep --config configs/sweep_paper.py --workdir runs/paper

1,728 runs. `base` is the per-run config (configs/base.py); each run sets its
dataset, arch, strategy, lr and seed on a copy. Override base fields with
--config.base.FIELD=VALUE (e.g. --config.base.data_dir=/data/ftjax, or
--config.base.dataset_options.unit=image for CheXpert and MURA).
"""

import ml_collections

from configs import base
from ftjax import launch

DATASETS = ("chexpert", "mura_shoulder", "mura_wrist", "mura_humerus", "brain_tumor_mri",
            "bach", "isic2020", "cholect50")  # tables 3-10, in order
ARCHS = ("resnet50", "densenet121", "vgg19")
STRATEGIES = ("ft", "lp", "g_lf", "g_fl", "lp_ft", "l1_sp", "l2_sp", "auto_rgn")


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.base = base.get_config()
  config.base.dataset_options = base.dataset_options(*DATASETS)
  config.base.progress = False  # the sweep shows one bar over runs
  config.datasets = DATASETS
  config.archs = ARCHS
  config.strategies = STRATEGIES
  config.lrs = (1e-3, 1e-4, 1e-5)
  config.seeds = (0, 1, 2)
  # launcher (local | slurm), slurm resources, compilation cache, runs per GPU.
  launch.add_cluster_fields(config)
  return config
