"""The paper's settings (section 3.6), for any dataset x strategy x architecture.

  python -m ftjax.train --config configs/base.py:isic2020,lp_ft,densenet121 \
      --workdir runs/isic_lpft_dn121 --config.lr=1e-4 --config.seed=1

The argument after ':' is 'dataset,strategy[,arch]' (arch defaults to resnet50).
The dataset may be one of your own, by the name it was prepared under
(python -m ftjax.data prepare --dataset folder --name knee_xr ...): its classes and
metrics are read from its metadata in config.data_dir.
"""

import ml_collections

from ftjax import data
from ftjax.strategies import option_defaults

# Every strategy's options with their defaults, read from the strategy modules'
# options dataclasses (the README's option table lists them); a strategy reads
# its own and ignores the others'.
STRATEGY_OPTIONS = option_defaults()


def dataset_options(*datasets: str) -> ml_collections.ConfigDict:
  """Every option of these datasets, unset (None: the dataset's default).

  Typed placeholders let the command line set them, e.g.
  --config.dataset_options.unit=image; options left unset are not passed on,
  so one base config serves every dataset of a sweep.
  """
  options = ml_collections.ConfigDict()
  for name in datasets:
    for key, default in data.option_defaults(name).items():
      if key not in options:
        options[key] = ml_collections.config_dict.placeholder(type(default))
  return options


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, strategy, arch = "isic2020", "ft", "resnet50"
  if arg:
    parts = arg.split(",")
    if len(parts) not in (2, 3):
      raise ValueError(f"configs/base.py:{arg}: expected 'dataset,strategy[,arch]'.")
    dataset, strategy = parts[:2]
    arch = parts[2] if len(parts) == 3 else arch

  config = ml_collections.ConfigDict()
  config.dataset = dataset
  config.dataset_options = dataset_options(dataset)  # e.g. unit="image"
  config.data_dir = "data"        # prepared datasets (python -m ftjax.data prepare)
  config.arch = arch
  config.init = "pretrained"      # or "random"
  config.weights_dir = "weights"  # converted ImageNet weights (python -m weights_port)
  config.strategy = strategy
  config.strategy_options = ml_collections.ConfigDict(STRATEGY_OPTIONS)

  config.lr = 1e-4                # the paper's grid: 1e-3, 1e-4, 1e-5
  config.batch_size = 64
  config.eval_batch_size = 128
  config.num_epochs = 50
  config.patience = 5             # early stopping, counted in the plan's last phase
  config.early_stopping_metric = "loss"  # validation loss, or one of the five metrics
  config.seed = 0                 # the paper's seeds: 0, 1, 2

  config.resize = 0               # 0: the architecture's (232 ResNet-50+, 256 others)
  config.crop = 224
  config.compute_dtype = "float32"  # or "bfloat16" (float32 parameters either way)
  config.num_workers = 0          # grain worker processes
  config.prefetch = 2             # training batches copied to the device ahead of use
  config.cache_features = False   # LP with frozen BN: train the head on cached features
  config.progress = True          # tqdm progress bars
  return config
