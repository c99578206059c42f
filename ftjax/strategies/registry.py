"""Strategy name -> Strategy, from the strategy modules' definitions.

A strategy module holds `DEFINITIONS`; adding a strategy is adding a module to
`MODULES`. Options come from a mapping (a dict or an ml_collections
ConfigDict) that may hold every strategy's options (a sweep shares one): a
strategy reads its own fields and ignores the others'; a key no strategy
knows is an error. `option_defaults()` is every option with its default
(configs/base.py), `option_docs()` their one-line docs.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import optax

from ftjax import paper_results
from ftjax.models.registry import Arch, get_arch, has_batchnorm
from ftjax.strategies import auto_rgn, bss, freezing, knn, llrd, partial, sp, wise_ft
from ftjax.options import check_options
from ftjax.strategies.base import HOOKS, LR_NAME, Definition, SharedOptions, Strategy

# The paper's families first, then the strategies beyond it.
MODULES = (freezing, sp, auto_rgn, llrd, partial, wise_ft, knn, bss)
DEFINITION: dict[str, Definition] = {d.name: d for m in MODULES for d in m.DEFINITIONS}
STRATEGIES = tuple(DEFINITION)
PAPER_STRATEGIES = paper_results.STRATEGIES
DEFAULT_LR = 1e-3


def _fields() -> dict[str, dataclasses.Field]:
  """Every option of every strategy; one name means one option everywhere."""
  out: dict[str, dataclasses.Field] = {}
  for definition in DEFINITION.values():
    for field in dataclasses.fields(definition.options):
      if field.name in out and out[field.name].default != field.default:
        raise TypeError(f"strategy option {field.name!r} has two defaults "
                        f"({out[field.name].default!r}, {field.default!r}).")
      out.setdefault(field.name, field)
  return out


def option_defaults() -> dict[str, Any]:
  return {name: field.default for name, field in _fields().items()}


def option_docs() -> dict[str, str]:
  return {name: field.metadata["doc"] for name, field in _fields().items()}


# Kept for callers that read the defaults as one dict (lr included).
DEFAULTS: dict[str, Any] = {"lr": DEFAULT_LR, **option_defaults()}


def options_of(name: str, config: Mapping[str, Any] | None = None) -> Any:
  """The typed options of strategy `name` from `config` (checked)."""
  config = dict(config.to_dict() if hasattr(config, "to_dict") else (config or {}))
  config.pop("lr", None)
  unknown = set(config) - set(_fields())
  if unknown:
    raise ValueError(f"Unknown strategy options {sorted(unknown)}. Valid: "
                     f"{', '.join(_fields())}.")
  options_class = _definition(name).options
  own = {f.name for f in dataclasses.fields(options_class)}
  options = options_class(**{k: v for k, v in config.items() if k in own})
  # Every given option is checked, the other strategies' too: a sweep's typo
  # in alpha must not wait for the first SP run.
  for other in {d.options for d in DEFINITION.values()}:
    names = {f.name for f in dataclasses.fields(other)}
    check_options(other(**{k: v for k, v in config.items() if k in names}))
  return options


def _definition(name: str) -> Definition:
  if name not in DEFINITION:
    raise ValueError(f"Unknown strategy {name!r}. Valid names: {', '.join(STRATEGIES)}.")
  return DEFINITION[name]


def uses_lr(name: str) -> bool:
  """False for training-free strategies (one run per seed, whatever the lrs)."""
  return _definition(name).uses_lr


def check_applies(arch: Arch, options: Any) -> None:
  """Refuses a BatchNorm option on an architecture without BatchNorm (ConvNeXt,
  VGG without _bn), where it would change nothing. Their defaults ('train',
  'exclude') are what such an architecture does anyway."""
  if has_batchnorm(arch):
    return
  why = (f"{arch.name} has no BatchNorm (no running statistics"
         + ("; its LayerNorm layers normalise each example by itself)" if
            arch.family == "convnext" else ")"))
  if options.bn_mode == "frozen":
    raise ValueError(f"bn_mode='frozen' cannot apply: {why}. Leave bn_mode at 'train' "
                     f"for {arch.name}.")
  if getattr(options, "rgn_bn", "exclude") == "include":
    raise ValueError(f"rgn_bn='include' cannot apply: {why}, so every tensor already "
                     f"gets its own RGN. Leave rgn_bn at 'exclude' for {arch.name}.")


def get_strategy(name: str, arch: str | Arch,
                 config: Mapping[str, Any] | None = None) -> Strategy:
  """The strategy `name` for `arch`; `config` holds its options and 'lr'.

  The transform carries the learning rate as optax state
  (opt_state.hyperparams['learning_rate']), so a state initialised at one lr
  keeps it through `transform.update`.
  """
  definition = _definition(name)
  arch = get_arch(arch) if isinstance(arch, str) else arch
  given = config.to_dict() if hasattr(config, "to_dict") else dict(config or {})
  lr = given.get("lr", DEFAULT_LR)
  options = options_of(name, config)
  check_applies(arch, options)
  built = definition.build(arch, options)
  transform = optax.inject_hyperparams(built.transform)(**{LR_NAME: lr})
  return Strategy(name=name, transform=transform, plan=built.plan,
                  bn_mode=options.bn_mode, options=options,
                  hparams={"lr": lr, **dataclasses.asdict(options)},
                  **{hook: getattr(built, hook) for hook in HOOKS})


def check_plan(name: str, plan, num_epochs: int, options: Any = None) -> str | None:
  """ValueError when `num_epochs` never lets strategy `name` leave its plan's first
  phase (LP-FT with num_epochs <= lp_epochs trains only the head, which is LP); the
  note to print when the plan stops before its last phase (gradual unfreezing cut
  short), else None. The error names the options that set the phase lengths."""
  if len(plan.phases) < 2:
    return None
  first, start = plan.phases[0].epochs, plan.last_phase_start
  names = _definition(name).plan_options
  given = "".join(f"; strategy_options.{o}={getattr(options, o)!r}"
                  for o in names if hasattr(options, o))
  if num_epochs <= first:
    flags = " / ".join(f"--config.strategy_options.{o}" for o in names) or "its options"
    raise ValueError(
        f"strategy {name}: config.num_epochs={num_epochs} ends within the plan's first "
        f"phase ({first} epoch(s) training only "
        f"{', '.join(sorted(plan.phases[0].trainable))}{given}), so {name} would never "
        f"get past it. Set --config.num_epochs above {first}, or shorten the phase with "
        f"{flags}.")
  if num_epochs <= start:
    return (f"strategy {name}: config.num_epochs={num_epochs} stops before the plan's last "
            f"phase (from epoch {start + 1}{given}): what it unfreezes from then on "
            f"never trains.")
  return None


def markdown_table() -> str:
  """The README's strategy table, from the definitions and their options' defaults."""
  lines = ["| strategy | what trains | options (`strategy_options.*`, defaults) |",
           "|---|---|---|"]
  shared = {f.name for f in dataclasses.fields(SharedOptions)}
  for name, definition in DEFINITION.items():
    own = [f for f in dataclasses.fields(definition.options) if f.name not in shared]
    options = ", ".join(f"`{f.name}={f.default}`" for f in own)
    lines.append(f"| `{name}` | {definition.summary} | {options} |")
  return "\n".join(lines) + "\n"
