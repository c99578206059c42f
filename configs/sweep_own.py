"""The study on your own dataset: strategies x learning rates x seeds, from random init
or ImageNet weights.

  python -m ftjax.sweep --config configs/sweep_own.py:knee_xr/resnet50 --workdir runs/knee
  python -m ftjax.report --workdir runs/knee --out report_knee

The argument after ':' is, as for every sweep config, 'datasets[/archs[/strategies]]'
(the order of the run directories), each a comma-separated list; here the datasets
are required: the --name your dataset was prepared under (python -m ftjax.data
prepare --dataset folder --name knee_xr ...), then the architectures (default
resnet50) and strategies (default the paper's eight). Every name is checked
(ftjax.names). Subsets on the command line: --strategies ft,lp_ft --lrs 1e-4
--seeds 0; --archs resnet18 sets the architectures; --config.base.init=random
without ImageNet weights.
"""

import ml_collections

from configs import base
from ftjax.strategies.registry import PAPER_STRATEGIES


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  # The paper's eight strategies; configs/sweep_extended.py:<dataset> adds six more.
  return base.sweep_config(f"configs/sweep_own.py:{arg}", arg, base.get_config(),
                           datasets=None, archs=("resnet50",), strategies=PAPER_STRATEGIES)
