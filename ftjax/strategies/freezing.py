"""Strategies that differ only in which modules train when: FT, LP, gradual
unfreezing (G-LF, G-FL), LP-FT, and a plan written in the config (`scheduled`).

All of them run gated Adam (a module's Adam state starts when it first trains).
Frozen modules never reach the optimizer: the step passes only the trainable
modules' gradients, which is what optax's set_to_zero on them would express.
"""

from __future__ import annotations

import dataclasses

from ftjax.strategies import schedules, transforms
from ftjax.strategies.base import Built, Definition, SharedOptions, option
from ftjax.strategies.partition import HEAD


@dataclasses.dataclass(frozen=True)
class GradualOptions(SharedOptions):
  unfreeze_every: int = option(1, "G-LF / G-FL: epochs between two unfreezing steps",
                               minimum=1)


@dataclasses.dataclass(frozen=True)
class LpFtOptions(SharedOptions):
  lp_epochs: int = option(5, "LP-FT: head-only epochs (the paper does not give it)",
                          minimum=1)


@dataclasses.dataclass(frozen=True)
class ScheduledOptions(SharedOptions):
  phases: str = option("head:5; all", "scheduled: the plan as data, e.g. "
                       "'head:2; head+layer4:3; all' (see schedules.parse)")


def _adam(plan_of):
  def build(arch, options) -> Built:
    return Built(lambda learning_rate: transforms.adam(learning_rate, options.adam_eps),
                 plan_of(arch, options))
  return build


DEFINITIONS = (
    Definition("ft", "all modules, Adam", SharedOptions,
               _adam(lambda arch, o: schedules.single(schedules.all_modules(arch)))),
    Definition("lp", "the new head only", SharedOptions,
               _adam(lambda arch, o: schedules.single({HEAD}))),
    Definition("g_lf", "the head, then one more block every `unfreeze_every` epochs "
               "from the last", GradualOptions,
               _adam(lambda arch, o: schedules.gradual(arch, "last_first",
                                                       int(o.unfreeze_every))),
               plan_options=("unfreeze_every",)),
    Definition("g_fl", "the head, then one more block every `unfreeze_every` epochs "
               "from the first", GradualOptions,
               _adam(lambda arch, o: schedules.gradual(arch, "first_last",
                                                       int(o.unfreeze_every))),
               plan_options=("unfreeze_every",)),
    Definition("lp_ft", "the head for `lp_epochs`, then all modules", LpFtOptions,
               _adam(lambda arch, o: schedules.head_then_all(arch, int(o.lp_epochs))),
               plan_options=("lp_epochs",)),
    Definition("scheduled", "the plan of option `phases`: which modules train in which "
               "epochs", ScheduledOptions,
               _adam(lambda arch, o: schedules.parse(arch, o.phases)),
               plan_options=("phases",)),
)
