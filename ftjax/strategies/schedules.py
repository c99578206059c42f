"""Plans: which top-level modules train in which epoch.

A plan is an ordered tuple of phases. Each phase names its trainable
top-level modules and lasts a number of epochs; the last phase lasts
`None` epochs (until the end of training or early stopping). The train step
is compiled once per phase, the trainable set being static inside it.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Sequence

from ftjax.models.registry import Arch
from ftjax.strategies.partition import HEAD


@dataclasses.dataclass(frozen=True)
class Phase:
  trainable: frozenset[str]
  epochs: int | None  # None: until the end (only the last phase)


@dataclasses.dataclass(frozen=True)
class Plan:
  phases: tuple[Phase, ...]

  def __post_init__(self):
    if not self.phases:
      raise ValueError("A plan needs at least one phase.")
    for phase in self.phases[:-1]:
      if phase.epochs is None or phase.epochs < 1:
        raise ValueError(f"Only the last phase may be open-ended; got {phase}.")
    if self.phases[-1].epochs is not None:
      raise ValueError("The last phase must have epochs=None (until the end).")

  def phase_index(self, epoch: int) -> int:
    """Index of the phase that epoch `epoch` (0-based) belongs to."""
    if epoch < 0:
      raise ValueError(f"epoch must be >= 0, got {epoch}.")
    start = 0
    for i, phase in enumerate(self.phases[:-1]):
      start += phase.epochs
      if epoch < start:
        return i
    return len(self.phases) - 1

  def phase_at(self, epoch: int) -> Phase:
    return self.phases[self.phase_index(epoch)]

  def trainable_at(self, epoch: int) -> frozenset[str]:
    return self.phase_at(epoch).trainable

  @property
  def last_phase_start(self) -> int:
    """First epoch of the last phase (where early stopping starts counting)."""
    return sum(p.epochs for p in self.phases[:-1])


def all_modules(arch: Arch) -> frozenset[str]:
  return frozenset(m for block in arch.blocks for m in block.modules)


def single(modules: Iterable[str]) -> Plan:
  return Plan((Phase(frozenset(modules), None),))


def head_then_all(arch: Arch, head_epochs: int) -> Plan:
  """LP-FT: the head alone for `head_epochs`, then every module."""
  return Plan((Phase(frozenset({HEAD}), head_epochs), Phase(all_modules(arch), None)))


def gradual(arch: Arch, direction: str, every: int = 1) -> Plan:
  """Gradual unfreezing: the head alone, then one more block every `every` epochs.

  direction 'last_first' (G-LF) adds blocks from the output towards the input,
  'first_last' (G-FL) from the input towards the output. A block that contains
  the head (VGG's classifier block) contributes its other modules when its turn
  comes.
  """
  if every < 1:
    raise ValueError(f"unfreeze_every must be >= 1, got {every}.")
  blocks: Sequence = arch.blocks
  if direction == "last_first":
    order = list(reversed(blocks))
  elif direction == "first_last":
    order = list(blocks)
  else:
    raise ValueError(f"direction must be 'last_first' or 'first_last', got {direction!r}.")
  trainable = frozenset({HEAD})
  sets = [trainable]
  for block in order:
    rest = frozenset(block.modules) - trainable
    if rest:
      trainable = trainable | rest
      sets.append(trainable)
  phases = [Phase(s, every) for s in sets[:-1]] + [Phase(sets[-1], None)]
  return Plan(tuple(phases))


def parse(arch: Arch, spec: str) -> Plan:
  """A plan written as data: phases separated by ';', each 'modules[:epochs]'.

  modules are '+'-joined names of the architecture's blocks or top-level
  modules, 'head', or 'all'; every phase but the last gives its epochs.
  'head:5; all' is LP-FT with lp_epochs=5; 'head:2; head+layer4:3; all' trains
  the head, then the last block too, then everything.
  """
  blocks = {b.name: frozenset(b.modules) for b in arch.blocks}
  names = {m: frozenset({m}) for m in all_modules(arch)}
  known = {**names, **blocks, "all": all_modules(arch)}
  phases = []
  parts = [p.strip() for p in spec.split(";")]
  for i, part in enumerate(parts):
    modules, _, epochs = part.partition(":")
    trainable: frozenset[str] = frozenset()
    for name in filter(None, (m.strip() for m in modules.split("+"))):
      if name not in known:
        raise ValueError(f"phases {spec!r}: unknown module {name!r}; {arch.name} has "
                         f"{', '.join(sorted(known))}.")
      trainable |= known[name]
    if not trainable:
      raise ValueError(f"phases {spec!r}: phase {i + 1} names no module.")
    last = i == len(parts) - 1
    if last != (not epochs.strip()):
      raise ValueError(f"phases {spec!r}: every phase but the last needs ':<epochs>' "
                       f"and the last must have none (it lasts until the end).")
    count = None if last else epochs.strip()
    if count is not None and (not count.isdigit() or int(count) < 1):
      raise ValueError(f"phases {spec!r}: epochs must be a whole number >= 1, got {count!r}.")
    phases.append(Phase(trainable, None if count is None else int(count)))
  return Plan(tuple(phases))
