"""MURA shoulder, Auto-RGN, ResNet-50 (paper table 4)."""

from configs import base


def get_config():
  return base.get_config("mura_shoulder,auto_rgn,resnet50")
