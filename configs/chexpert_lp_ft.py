"""CheXpert, LP-FT, DenseNet-121 (paper table 3)."""

from configs import base


def get_config():
  return base.get_config("chexpert,lp_ft,densenet121")
