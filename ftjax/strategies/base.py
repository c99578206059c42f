"""What a strategy is: its typed options, the Strategy the loop runs, and its hooks.

A strategy module (freezing.py, sp.py, auto_rgn.py, ...) declares
`DEFINITIONS`, one `Definition` per name: the options dataclass it reads and a
`build(arch, options) -> Built`. The options dataclasses are the only place
defaults live: `configs/base.py` and the README's option table read them.

The learning rate is not an option: it is optax state
(`optax.inject_hyperparams`), so one transform serves every learning rate of
a vmapped group (each run's state is initialised with its own).

Hooks are optional; the loop calls them without knowing the strategy:
  epoch_start     at every epoch start, given the epoch's first minibatches
                  (Auto-RGN: per-tensor learning rates, a fresh Adam)
  before_update   inside the train step, given this batch's gradients
  feature_penalty a term on the head's input features added to the loss (BSS)
  finalize        after training, before the test (WiSE-FT's mixing)
  fit             a training-free classifier on cached features (kNN)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Protocol

import optax

from ftjax.models.registry import Arch
from ftjax.options import option
from ftjax.strategies import schedules

LR_NAME = "learning_rate"
# The optional hooks, fields of both Built and Strategy (the module docstring).
HOOKS = ("epoch_start", "before_update", "feature_penalty", "finalize", "fit")


@dataclasses.dataclass(frozen=True)
class SharedOptions:
  """Options every strategy reads."""
  adam_eps: float = option(1e-8, "Adam epsilon (torch's default)", minimum=0.0)
  bn_mode: str = option("train", "BatchNorm of frozen modules: 'train' (PyTorch "
                        "model.train()) or 'frozen' (running statistics; refused "
                        "for architectures without BatchNorm, e.g. ConvNeXt)",
                        choices=("train", "frozen"))


class EpochStart(Protocol):
  """Work at every epoch start (Auto-RGN). `batches` of the epoch's first minibatches
  are passed in (and then trained on as usual); what it returns besides the state is
  written to <run>/<log_name>.jsonl."""

  batches: int
  log_name: str

  def jitted(self, grad_fn_of: Callable, strategy: "Strategy"
             ) -> Callable[[Any, Any, Any], tuple[Any, Any]]:
    """`(state, batches, key) -> (state, log)` for one run, compiled in pieces.
    grad_fn_of: `(trainable names) -> grad_fn`, the train step's gradient
    (`ftjax.step.grad_fn_factory`): a hook needs no import of the step."""

  def traceable(self, grad_fn_of: Callable, strategy: "Strategy"
                ) -> Callable[[Any, Any, Any], tuple[Any, Any]]:
    """The same as one traceable function (for `jax.vmap` over runs)."""


@dataclasses.dataclass(frozen=True)
class Built:
  """What a strategy module's `build` returns."""
  # (learning_rate) -> transform; the argument must be named learning_rate
  transform: Callable[[Any], optax.GradientTransformation]
  plan: schedules.Plan
  epoch_start: EpochStart | None = None
  before_update: Callable[..., Any] | None = None
  feature_penalty: Callable[[Any], Any] | None = None
  finalize: Any = None
  fit: Any = None


@dataclasses.dataclass(frozen=True)
class Definition:
  """One strategy name of a module: the options it reads and how it is built."""
  name: str
  summary: str  # one line for the README table and `--help`
  options: type = SharedOptions
  build: Callable[[Arch, Any], Built] = None  # type: ignore[assignment]
  uses_lr: bool = True  # False: training-free (the sweep runs it once per seed)
  # The options that set how long the plan's phases last (named when a plan does
  # not fit in config.num_epochs).
  plan_options: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Strategy:
  """A fine-tuning strategy: what the train loop needs to run it.

  transform: applied to the gradients of the trainable modules only; its
    learning rate is `opt_state.hyperparams['learning_rate']`.
  plan: the phases (trainable modules per epoch range).
  options: the typed options; hparams: options and lr as a dict, for logging.
  The other fields are the optional hooks of the module docstring.
  """

  name: str
  transform: optax.GradientTransformation
  plan: schedules.Plan
  bn_mode: str = "train"
  options: Any = None
  hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  epoch_start: EpochStart | None = None
  before_update: Callable[..., Any] | None = None
  feature_penalty: Callable[[Any], Any] | None = None
  finalize: Any = None
  fit: Any = None
