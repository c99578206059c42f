"""ISIC 2020, linear probing, ResNet-50 (paper table 9)."""

from configs import base


def get_config():
  return base.get_config("isic2020,lp,resnet50")
