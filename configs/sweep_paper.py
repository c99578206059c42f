"""The paper's grid (section 3.6): 8 datasets x 3 archs x 8 strategies x 3 lrs x 3 seeds.

  python -m ftjax.sweep --config configs/sweep_paper.py --workdir runs/paper
  python -m ftjax.sweep --config configs/sweep_paper.py:bach/resnet50 --workdir runs/bach

1,728 runs. `base` is the per-run config (configs/base.py); each run sets its
dataset, arch, strategy, lr and seed on a copy. Override base fields with
--config.base.FIELD=VALUE (e.g. --config.base.data_dir=/data/ftjax, or
--config.base.dataset_options.unit=image for CheXpert and MURA).

The argument after ':' is optional and, as for every sweep config,
'datasets[/archs[/strategies]]' (the order of the run directories), each a
comma-separated list replacing the paper's: 'bach/resnet50' is BACH on ResNet-50
with the eight strategies. Every name is checked (ftjax.names).
"""

import ml_collections

from configs import base

DATASETS = ("chexpert", "mura_shoulder", "mura_wrist", "mura_humerus", "brain_tumor_mri",
            "bach", "isic2020", "cholect50")  # tables 3-10, in order
ARCHS = ("resnet50", "densenet121", "vgg19")
STRATEGIES = ("ft", "lp", "g_lf", "g_fl", "lp_ft", "l1_sp", "l2_sp", "auto_rgn")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return base.sweep_config(f"configs/sweep_paper.py:{arg}", arg, base.get_config(),
                           datasets=DATASETS, archs=ARCHS, strategies=STRATEGIES)
