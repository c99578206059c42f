"""WiSE-FT (Wortsman et al. 2022): a weight-space ensemble of the LP and the FT solution.

Training is LP-FT's plan (the head for `lp_epochs`, then every module). The LP
solution is the params and BatchNorm statistics at the end of the LP phase: the
epoch-start hook copies them into the optimizer state when the first fine-tuning
epoch starts, so they are checkpointed with the run and survive a resume. The FT
solution is the best checkpoint (LP-FT's choice by validation). After training
(`finalize`), theta = (1 - alpha) theta_LP + alpha theta_FT, BatchNorm statistics
included, is validated for every alpha of `wise_alphas`; the test is evaluated
once, with the alpha of the best validation score (the early-stopping metric).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftjax.models.registry import variable_shapes
from ftjax.strategies import schedules, transforms
from ftjax.strategies.base import Built, Definition, option
from ftjax.strategies.freezing import LpFtOptions

DEFAULT_ALPHAS = "0,0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9,1"


@dataclasses.dataclass(frozen=True)
class Options(LpFtOptions):
  wise_alphas: str = option(DEFAULT_ALPHAS, "WiSE-FT: mixing coefficients tried on "
                            "validation (0 = the LP solution, 1 = the FT solution), "
                            "comma-separated, or a count n >= 2 of evenly spaced ones")


def parse_alphas(text: str) -> tuple[float, ...]:
  """The coefficients of `wise_alphas`: '0,0.5,1', or '11' for 0, 0.1, ..., 1."""
  text = str(text).strip()
  fix = ("write coefficients in [0, 1] separated by commas, e.g. '0,0.5,1', or a count "
         "n >= 2 of evenly spaced ones, e.g. '11'")
  if text.isdigit() and int(text) >= 2:
    n = int(text)
    return tuple(i / (n - 1) for i in range(n))  # exactly 0.0 and 1.0 at the ends
  try:
    alphas = tuple(float(part) for part in text.split(","))
  except ValueError:
    raise ValueError(f"wise_alphas {text!r} is not a list of numbers: {fix}.") from None
  outside = [a for a in alphas if not 0.0 <= a <= 1.0]  # NaN included
  if outside:
    raise ValueError(f"wise_alphas {text!r}: {outside[0]!r} is outside [0, 1]: {fix}.")
  if len(set(alphas)) != len(alphas):
    raise ValueError(f"wise_alphas {text!r} names a coefficient twice: {fix}.")
  return alphas


# ------------------------------------------------------------------ the LP solution


class LpSolutionState(NamedTuple):
  epochs_started: jax.Array  # int32: epochs whose start the hook has seen
  lp_captured: jax.Array  # bool: the LP phase has ended and lp_* hold its solution
  lp_params: Any
  lp_batch_stats: Any


@functools.lru_cache(maxsize=None)
def _batch_stats_like(arch) -> Any:
  """The architecture's BatchNorm statistics as ShapeDtypeStructs (the optimizer's
  init sees only params)."""
  return variable_shapes(arch)["batch_stats"]


def lp_solution_holder(arch) -> optax.GradientTransformation:
  """Keeps the LP solution in the optimizer state; leaves the updates alone."""

  def init_fn(params):
    zeros = lambda like: jnp.zeros(like.shape, like.dtype)
    return LpSolutionState(jnp.zeros((), jnp.int32), jnp.zeros((), bool),
                           jax.tree_util.tree_map(zeros, dict(params)),
                           jax.tree_util.tree_map(zeros, dict(_batch_stats_like(arch))))

  def update_fn(updates, state, params=None):
    del params
    return updates, state

  return optax.GradientTransformation(init_fn, update_fn)


def _capture(lp_epochs: int):
  """`(state, batches, key) -> (state, None)`: at the start of epoch `lp_epochs` (the
  first fine-tuning epoch) the state's params and statistics become the LP solution."""

  def start(state, batches, key):
    del batches, key
    get = functools.partial(optax.tree_utils.tree_get, state.opt_state)
    started = get("epochs_started")
    now = started == lp_epochs
    keep = lambda new, old: jnp.where(now, new, old)
    opt_state = optax.tree_utils.tree_set(
        state.opt_state, epochs_started=started + 1, lp_captured=get("lp_captured") | now,
        lp_params=jax.tree_util.tree_map(keep, dict(state.params), get("lp_params")),
        lp_batch_stats=jax.tree_util.tree_map(keep, dict(state.batch_stats),
                                              get("lp_batch_stats")))
    return state.replace(opt_state=opt_state), None

  return start


@dataclasses.dataclass(frozen=True)
class CaptureLpSolution:
  """The `base.EpochStart` hook: no minibatches, nothing logged."""
  lp_epochs: int
  batches: int = 0
  log_name: str = "wise_ft"

  def jitted(self, grad_fn_of, strategy):
    del grad_fn_of, strategy
    return jax.jit(_capture(self.lp_epochs), donate_argnums=(0,))

  def traceable(self, grad_fn_of, strategy):
    del grad_fn_of, strategy
    return _capture(self.lp_epochs)


def lp_state(state: Any) -> Any:
  """`state` with the LP solution as its params and statistics: the captured one, or
  the state's own when training ended before fine-tuning started (then it is the
  end of the LP phase). Works on a group's stacked state too."""
  get = functools.partial(optax.tree_utils.tree_get, state.opt_state)
  captured = get("lp_captured")

  def pick(lp, current):
    flag = jnp.reshape(captured, captured.shape + (1,) * (lp.ndim - captured.ndim))
    return jnp.where(flag, lp, current)

  return state.replace(
      params=jax.tree_util.tree_map(pick, get("lp_params"), dict(state.params)),
      batch_stats=jax.tree_util.tree_map(pick, get("lp_batch_stats"),
                                         dict(state.batch_stats)))


# ------------------------------------------------------------------ mixing


def mix(lp: Any, ft: Any, alpha: float) -> Any:
  """(1 - alpha) lp + alpha ft, leaf by leaf; alpha 0 and 1 are lp and ft themselves
  (the formula would turn a -0.0 into +0.0)."""
  if alpha == 0.0:
    return lp
  if alpha == 1.0:
    return ft
  return jax.tree_util.tree_map(
      lambda a, b: ((1.0 - alpha) * a + alpha * b).astype(a.dtype), lp, ft)


def _finalize(alphas: tuple[float, ...]):
  def finalize(state, best, *, variables_of: Callable[[Any], Any],
               validate: Callable[[Any], dict[str, float]], monitor) -> tuple[Any, dict]:
    """The mix to test and what results.json records: every alpha's validation
    score and the chosen alpha (the best score; the largest alpha if none is a
    number)."""
    lp = variables_of(lp_state(state))
    scores, chosen, chosen_score = [], None, None
    for alpha in alphas:
      score = float(validate(mix(lp, best, alpha))[monitor.metric])
      scores.append(score)
      if monitor.improved(score, chosen_score):
        chosen, chosen_score = alpha, score
    chosen = max(alphas) if chosen is None else chosen
    record = {"alpha": chosen, "metric": monitor.metric, "alphas": list(alphas),
              "validation": [None if np.isnan(s) else s for s in scores]}
    return mix(lp, best, chosen), {"wise_ft": record}
  return finalize


def _build(arch, options: Options) -> Built:
  alphas = parse_alphas(options.wise_alphas)

  def transform(learning_rate):
    return optax.chain(lp_solution_holder(arch), transforms.adam(learning_rate,
                                                                 options.adam_eps))

  return Built(transform, schedules.head_then_all(arch, int(options.lp_epochs)),
               epoch_start=CaptureLpSolution(int(options.lp_epochs)),
               finalize=_finalize(alphas))


DEFINITIONS = (
    Definition("wise_ft", "LP-FT, then the weight-space mix (1 - alpha) LP + alpha FT "
               "with alpha chosen on validation from `wise_alphas`", Options, _build,
               plan_options=("lp_epochs",)),
)
