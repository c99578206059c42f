"""A small sweep on the embedded synthetic data (no downloads; CPU minutes).

  python -m ftjax.sweep --config configs/sweep_demo.py --workdir runs/sweep_demo
  python -m ftjax.report --workdir runs/sweep_demo --out report_demo

The argument after ':' is optional and, as for every sweep config,
'datasets[/archs[/strategies]]' (the order of the run directories), each a
comma-separated list replacing the demo's: 'synthetic/resnet18/ft,lp'. Every name
is checked (ftjax.names).
"""

import ml_collections

from configs import base, demo


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  run_config = demo.get_config()
  run_config.num_epochs = 3
  return base.sweep_config(f"configs/sweep_demo.py:{arg}", arg, run_config,
                           datasets=("synthetic",), archs=("resnet18",),
                           strategies=("ft", "lp", "lp_ft", "auto_rgn"),
                           lrs=(1e-3, 1e-4), seeds=(0, 1))
