"""The paper's grid plus six strategies researchers compare today, on any datasets.

  python -m ftjax.sweep --config configs/sweep_extended.py --workdir runs/extended
  python -m ftjax.sweep --config configs/sweep_extended.py:knee_xr --workdir runs/knee_ext
  python -m ftjax.report --workdir runs/extended --out report_extended

The argument after ':' is optional and, as for every sweep config,
'datasets[/archs[/strategies]]' (the order of the run directories), each a
comma-separated list: 'knee_xr,bach' (datasets: built-in names or your own, by the
name they were prepared under), 'knee_xr/resnet18' (and the archs), ... Without it,
the paper's eight datasets and three archs. Every name is checked (ftjax.names):
'resnet18' in the datasets' place is refused, not taken for a dataset.
Strategies: the paper's eight, then llrd, bitfit, surgical, wise_ft, knn and
bss (ftjax/strategies/, one module per family). knn trains nothing and has no
learning rate: the sweep runs it once per seed. The report shows the new
strategies beside the paper's, with no published value for them.
"""

import ml_collections

from configs import base, sweep_paper

EXTENDED_STRATEGIES = ("llrd", "bitfit", "surgical", "wise_ft", "knn", "bss")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  return base.sweep_config(f"configs/sweep_extended.py:{arg}", arg, base.get_config(),
                           datasets=sweep_paper.DATASETS, archs=sweep_paper.ARCHS,
                           strategies=sweep_paper.STRATEGIES + EXTENDED_STRATEGIES)
