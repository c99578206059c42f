"""BSS, batch spectral shrinkage (Chen et al. 2019): FT plus a penalty on the
smallest singular values of the batch's features.

The features are the head's input (the backbone's pooled output, [B, D]);
penalty = sum of the squares of the `bss_k` smallest of their min(B, D)
singular values, added to the loss with weight `bss_weight`, as tllib's
BatchSpectralShrinkage and its fine-tuning example (trade-off 0.001) do.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from ftjax.strategies import schedules, transforms
from ftjax.strategies.base import Built, Definition, SharedOptions, option


@dataclasses.dataclass(frozen=True)
class Options(SharedOptions):
  bss_k: int = option(1, "BSS: how many of the smallest singular values of the batch's "
                      "features are penalised", minimum=1)
  bss_weight: float = option(0.001, "BSS: weight of the penalty in the loss (tllib's "
                             "trade-off)", minimum=0.0)


def bss_penalty(features: jax.Array, k: int) -> jax.Array:
  """Sum of the squares of the k smallest singular values of features [B, D].

  A batch with fewer than k singular values (min(B, D) < k) has all of them
  penalised.
  """
  singular = jnp.linalg.svd(features.astype(jnp.float32), compute_uv=False)  # descending
  return jnp.sum(jnp.square(singular[-min(int(k), singular.shape[0]):]))


def _build(arch, options: Options) -> Built:
  k, weight = int(options.bss_k), float(options.bss_weight)
  return Built(lambda learning_rate: transforms.adam(learning_rate, options.adam_eps),
               schedules.single(schedules.all_modules(arch)),
               feature_penalty=lambda features: weight * bss_penalty(features, k))


DEFINITIONS = (
    Definition("bss", "all modules, Adam on the loss + a penalty on the smallest "
               "singular values of the batch's features", Options, _build),
)
