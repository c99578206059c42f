"""Fine-tuning strategies: one module per family, block labels, plans and optax transforms."""

from ftjax.strategies.auto_rgn import (rgn_normalize, rgn_ratios, rgn_scale, rgn_weights,
                                       set_rgn_weights)
from ftjax.strategies.base import Definition, SharedOptions, Strategy
from ftjax.strategies.partition import (HEAD, bn_mask, kernel_mask, label_of, labels,
                                        merge, split)
from ftjax.strategies.registry import (DEFAULTS, PAPER_STRATEGIES, STRATEGIES, get_strategy,
                                       option_defaults, option_docs, uses_lr)
from ftjax.strategies.schedules import Phase, Plan
from ftjax.strategies.sp import sp_penalty, sp_regularizer
from ftjax.strategies.transforms import gated, gated_adam

__all__ = ["DEFAULTS", "Definition", "HEAD", "PAPER_STRATEGIES", "Phase", "Plan",
           "STRATEGIES", "SharedOptions", "Strategy", "bn_mask", "gated", "gated_adam",
           "get_strategy", "kernel_mask", "label_of", "labels", "merge", "option_defaults",
           "option_docs", "rgn_normalize", "rgn_ratios", "rgn_scale", "rgn_weights",
           "set_rgn_weights", "sp_penalty", "sp_regularizer", "split", "uses_lr"]
