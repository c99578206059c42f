"""The paper's settings (section 3.6), for any dataset x strategy x architecture.

  python -m ftjax.train --config configs/base.py:isic2020,lp_ft,densenet121 \
      --workdir runs/isic_lpft_dn121 --config.lr=1e-4 --config.seed=1

The argument after ':' is 'dataset,strategy[,arch]' (arch defaults to resnet50).
The dataset may be one of your own, by the name it was prepared under
(python -m ftjax.data prepare --dataset folder --name knee_xr ...): its classes and
metrics are read from its metadata in config.data_dir. An unknown strategy or
architecture, or a name in the wrong place ('resnet18' as the strategy), is refused
in one line naming the valid names (ftjax.names).
"""

import ml_collections

from ftjax import data, names
from ftjax.strategies import option_defaults

ARGUMENT = "dataset,strategy[,arch]"

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


def parse_argument(arg: str) -> tuple[str, str, str]:
  """(dataset, strategy, arch) of 'dataset,strategy[,arch]', each name checked."""
  where = f"configs/base.py:{arg}"
  parts = [p.strip() for p in arg.split(",")]
  if len(parts) not in (2, 3):
    raise names.UnknownName(f"{where}: expected {ARGUMENT!r}, e.g. "
                            f"{names.EXAMPLE[ARGUMENT]!r}.")
  [dataset] = names.check_dataset_names(where, parts[:1], ARGUMENT)
  [strategy] = names.check_names(where, "strategies", parts[1:2], names.strategies(), ARGUMENT)
  [arch] = names.check_names(where, "archs", parts[2:] or ["resnet50"], names.archs(),
                             ARGUMENT)
  return dataset, strategy, arch


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  dataset, strategy, arch = parse_argument(arg) if arg else ("isic2020", "ft", "resnet50")

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


def sweep_config(where: str, arg: str | None, run_config: ml_collections.ConfigDict, *,
                 datasets: tuple[str, ...] | None, archs: tuple[str, ...],
                 strategies: tuple[str, ...], lrs: tuple[float, ...] = (1e-3, 1e-4, 1e-5),
                 seeds: tuple[int, ...] = (0, 1, 2)) -> ml_collections.ConfigDict:
  """A sweep config (configs/sweep_*.py): `run_config` as every run's base, and the
  axes, where the argument 'datasets[/archs[/strategies]]' (ftjax.names) replaces
  the defaults it names. `datasets=None`: the argument must name them."""
  given = names.sweep_argument(where, arg)
  datasets = given.get("datasets", datasets)
  if datasets is None:
    raise names.UnknownName(f"{where}: name your dataset(s), as prepared with python -m "
                            f"ftjax.data prepare --name; the argument is "
                            f"{names.SWEEP_ARGUMENT!r}, e.g. knee_xr/resnet50.")
  from ftjax.sweep import slurm as launch  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict()
  config.base = run_config
  options = dataset_options(*datasets)
  for key, value in run_config.dataset_options.items():  # values the run config set
    if key in options and value is not None:
      options[key] = value
  config.base.dataset_options = options
  config.base.progress = False  # the sweep shows one bar over runs
  config.datasets = datasets
  config.archs = given.get("archs", archs)
  config.strategies = given.get("strategies", strategies)
  config.lrs = lrs
  config.seeds = seeds
  # launcher (local | slurm), slurm resources, compilation cache, runs per GPU.
  launch.add_cluster_fields(config)
  return config
