"""The embedded demo: the synthetic dataset, a small randomly initialised ResNet.

No downloads; a few minutes on 2 CPU cores. `python -m ftjax.demo` trains the
strategies listed here one after another and prints a table.
"""

from configs import base


def get_config():
  config = base.get_config("synthetic,ft,resnet18")
  config.init = "random"          # no ImageNet weights needed
  config.data_dir = "data"
  config.dataset_options.num_train = 320
  config.dataset_options.num_test = 120
  config.resize = 72              # small images keep the CPU busy for minutes, not hours
  config.crop = 64
  config.batch_size = 32
  config.lr = 1e-3
  config.num_epochs = 6
  config.patience = 3
  config.strategy_options.lp_epochs = 2
  config.demo_strategies = ("lp", "ft", "lp_ft")
  return config
