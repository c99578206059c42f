"""Tiny training configs and a finished run's best checkpoint, shared by the run tests."""


import jax

from configs import demo
from ftjax.engine import checkpoints
from ftjax.models import registry

def best_checkpoint(workdir, config):
  """(epoch, variables) of a finished tiny run's best checkpoint, on the host."""
  like = registry.init_variables(registry.get_arch(config.arch), 0, 4)
  ckpts = checkpoints.RunCheckpoints(workdir)
  epoch, best = ckpts.restore_best(like)
  ckpts.close()
  return epoch, jax.device_get(best)

def tiny_config(data_dir, strategy, **overrides):
  """The demo's model and data, shrunk to seconds per epoch on a CPU."""
  config = demo.get_config()
  config.data_dir = str(data_dir)
  config.strategy = strategy
  config.dataset_options.num_train = 120
  config.dataset_options.num_test = 48
  config.resize, config.crop = 36, 32
  config.batch_size = 16
  config.eval_batch_size = 32
  config.num_epochs = 2
  config.progress = False
  config.strategy_options.lp_epochs = 1
  config.strategy_options.phases = "head:1; all"  # past the head within num_epochs
  config.strategy_options.rgn_batches = 2
  for key, value in overrides.items():
    config[key] = value
  return config

