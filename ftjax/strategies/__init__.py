"""Fine-tuning strategies: block labels, plans and optax transforms."""

from ftjax.strategies.partition import (HEAD, bn_mask, kernel_mask, label_of, labels,
                                        merge, split)
from ftjax.strategies.registry import DEFAULTS, STRATEGIES, Strategy, get_strategy
from ftjax.strategies.schedules import Phase, Plan
from ftjax.strategies.transforms import (gated, gated_adam, rgn_normalize, rgn_ratios,
                                         rgn_scale, rgn_weights, set_rgn_weights,
                                         sp_penalty, sp_regularizer)

__all__ = ["DEFAULTS", "HEAD", "Phase", "Plan", "STRATEGIES", "Strategy", "bn_mask",
           "gated", "gated_adam", "get_strategy", "kernel_mask", "label_of", "labels",
           "merge", "rgn_normalize", "rgn_ratios", "rgn_scale", "rgn_weights",
           "set_rgn_weights", "sp_penalty", "sp_regularizer", "split"]
