"""Conversion of torchvision ImageNet weights for ftjax."""
