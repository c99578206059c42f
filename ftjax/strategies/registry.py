"""Strategy name -> (optax transform, plan, options).

Hyper-parameters come from a mapping (a dict or an ml_collections
ConfigDict); unknown keys are an error. Defaults:

  lr              1e-3   Adam learning rate (b1 0.9, b2 0.999 as torch)
  adam_eps        1e-8   Adam epsilon (torch's default)
  unfreeze_every  1      epochs between two unfreezing steps (g_lf, g_fl)
  lp_epochs       5      head-only epochs of lp_ft (the paper does not give it)
  alpha, beta     0.01   SP coefficients of the pretrained modules / the head
  sp_apply_to     'kernels' | 'all'   which pretrained parameters get SP's alpha
                  term (beta covers every head parameter either way)
  rgn_batches     5      minibatches averaged by the Auto-RGN probe
  rgn_every       'epoch' | 'step'    when Auto-RGN weights are recomputed
  rgn_bn          'exclude' | 'include'   BatchNorm params in Auto-RGN's optimizer
  bn_mode         'train' | 'frozen'  BatchNorm of frozen modules (see ftjax.step)
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import optax

from ftjax.models.registry import Arch, get_arch
from ftjax.strategies import schedules, transforms
from ftjax.strategies.partition import HEAD

DEFAULTS: dict[str, Any] = dict(
    lr=1e-3, adam_eps=1e-8, unfreeze_every=1, lp_epochs=5, alpha=0.01, beta=0.01,
    sp_apply_to="kernels", rgn_batches=5, rgn_every="epoch", rgn_bn="exclude", bn_mode="train")

_CHOICES = dict(sp_apply_to=("kernels", "all"), rgn_every=("epoch", "step"),
                rgn_bn=("exclude", "include"), bn_mode=("train", "frozen"))


@dataclasses.dataclass(frozen=True)
class Strategy:
  """A fine-tuning strategy: what the train loop needs to run it.

  transform: applied to the gradients of the trainable modules only.
  plan: the phases (trainable modules per epoch range).
  reset_each_epoch: re-create the optimizer state at every epoch start
    (Auto-RGN: Adam with new per-tensor learning rates, moments reset).
  rgn: Auto-RGN options (batches, every, bn), None for other strategies.
  hparams: the resolved hyper-parameters, for logging.
  """

  name: str
  transform: optax.GradientTransformation
  plan: schedules.Plan
  bn_mode: str = "train"
  reset_each_epoch: bool = False
  rgn: Mapping[str, Any] | None = None
  hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _resolve(config: Mapping[str, Any] | None) -> dict[str, Any]:
  if config is None:
    config = {}
  elif hasattr(config, "to_dict"):
    config = config.to_dict()
  unknown = set(config) - set(DEFAULTS)
  if unknown:
    raise ValueError(f"Unknown strategy options {sorted(unknown)}. Valid: "
                     f"{', '.join(DEFAULTS)}.")
  hp = {**DEFAULTS, **config}
  for key, choices in _CHOICES.items():
    if hp[key] not in choices:
      raise ValueError(f"{key} must be one of {choices}, got {hp[key]!r}.")
  for key in ("unfreeze_every", "lp_epochs", "rgn_batches"):
    if int(hp[key]) < 1:
      raise ValueError(f"{key} must be >= 1, got {hp[key]!r}.")
  for key in ("alpha", "beta"):  # a negative weight would reward moving away from w0
    if not float(hp[key]) >= 0:
      raise ValueError(f"{key} must be >= 0, got {hp[key]!r}.")
  return hp


def _adam(hp):
  return transforms.gated_adam(hp["lr"], eps=hp["adam_eps"])


def _ft(arch, hp):
  return _adam(hp), schedules.single(schedules.all_modules(arch))


def _lp(arch, hp):
  # Frozen modules never reach the optimizer (the step passes only the head's
  # gradients), which is what set_to_zero on them would express.
  return _adam(hp), schedules.single({HEAD})


def _g_lf(arch, hp):
  return _adam(hp), schedules.gradual(arch, "last_first", int(hp["unfreeze_every"]))


def _g_fl(arch, hp):
  return _adam(hp), schedules.gradual(arch, "first_last", int(hp["unfreeze_every"]))


def _lp_ft(arch, hp):
  return _adam(hp), schedules.head_then_all(arch, int(hp["lp_epochs"]))


def _sp(norm):
  def build(arch, hp):
    tx = optax.chain(
        transforms.sp_regularizer(None, hp["alpha"], hp["beta"], norm, hp["sp_apply_to"]),
        _adam(hp))
    return tx, schedules.single(schedules.all_modules(arch))
  return build


def _auto_rgn(arch, hp):
  tx = optax.chain(_adam(hp), transforms.rgn_scale())
  return tx, schedules.single(schedules.all_modules(arch))


_BUILDERS = {"ft": _ft, "lp": _lp, "g_lf": _g_lf, "g_fl": _g_fl, "lp_ft": _lp_ft,
             "l1_sp": _sp("l1"), "l2_sp": _sp("l2"), "auto_rgn": _auto_rgn}

STRATEGIES = tuple(_BUILDERS)


def get_strategy(name: str, arch: str | Arch,
                 config: Mapping[str, Any] | None = None) -> Strategy:
  """The strategy `name` for `arch`, with `config` overriding DEFAULTS.

  ft: all modules, Adam. lp: the head only. g_lf / g_fl: the head, then one
  more block every `unfreeze_every` epochs from the last / first block.
  lp_ft: the head for `lp_epochs`, then all. l1_sp / l2_sp: all modules, Adam
  on loss + SP penalty (w0 = the parameters the optimizer is initialised
  with). auto_rgn: all modules, Adam with per-tensor lr * RGN / max RGN,
  re-created every epoch. Gated Adam everywhere: a module's Adam state starts
  when it first trains.
  """
  if name not in _BUILDERS:
    raise ValueError(f"Unknown strategy {name!r}. Valid names: {', '.join(STRATEGIES)}.")
  arch = get_arch(arch) if isinstance(arch, str) else arch
  hp = _resolve(config)
  transform, plan = _BUILDERS[name](arch, hp)
  rgn = None
  if name == "auto_rgn":
    rgn = dict(batches=int(hp["rgn_batches"]), every=hp["rgn_every"], bn=hp["rgn_bn"])
  return Strategy(name=name, transform=transform, plan=plan, bn_mode=hp["bn_mode"],
                  reset_each_epoch=name == "auto_rgn", rgn=rgn, hparams=hp)
