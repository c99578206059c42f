"""kNN: a k-nearest-neighbour classifier on the frozen backbone's features (no training).

The training-free baseline of the MedMNIST+ benchmark (Doerrich et al. 2024,
"Rethinking model prototyping through the MedMNIST+ dataset collection"):
the pretrained backbone embeds the training split (the support set), and an
image is classified by its k nearest training embeddings. Their released
evaluation (evaluate.py) uses `NearestNeighbors(n_neighbors=11)`, whose
metric is scikit-learn's default Minkowski p=2, so the defaults here are
k = 11 and the Euclidean distance; 'cosine' (1 - cosine similarity) is the
other choice.

Probabilities are scikit-learn's `KNeighborsClassifier(weights='uniform')`
`predict_proba`: the fraction of the k neighbours in each class, and per
label (the fraction of neighbours carrying it) for multi-label datasets. The
features are those `ftjax.engine.features` caches (the head's input, eval mode).
The search runs in JAX over chunks of queries and of the support set, so
memory stays at one chunk of distances whatever the split sizes.

The `fit` hook is a `KNN`: `KNN.fit(features, labels, num_classes=, multilabel=)`
returns a predictor with `predict_proba(features) -> float64 [N, C]`;
`ftjax.engine.fit` runs it where a trained strategy runs its epochs.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ftjax.strategies import schedules
from ftjax.strategies.base import Built, Definition, SharedOptions, option
from ftjax.strategies.partition import HEAD

METRICS = ("euclidean", "cosine")
# Rows per compiled chunk: QUERY_CHUNK x SUPPORT_CHUNK float32 distances (16 MiB).
QUERY_CHUNK = 512
SUPPORT_CHUNK = 8192


@dataclasses.dataclass(frozen=True)
class Options(SharedOptions):
  knn_k: int = option(11, "kNN: neighbours per vote (MedMNIST+'s k)", minimum=1)
  knn_metric: str = option("euclidean", "kNN: distance of backbone features, "
                           "'euclidean' (MedMNIST+'s) or 'cosine'", choices=METRICS)


def _prepared(features: jax.Array, metric: str) -> jax.Array:
  """Cosine compares directions: rows scaled to unit norm (a zero row stays zero,
  as scikit-learn's normalize leaves it, so its distance to anything is 1)."""
  features = features.astype(jnp.float32)
  if metric == "euclidean":
    return features
  norms = jnp.linalg.norm(features, axis=1, keepdims=True)
  return features / jnp.where(norms == 0, 1.0, norms)


def _distances(queries: jax.Array, support: jax.Array, metric: str) -> jax.Array:
  """[Q, S] distances up to a per-query monotone map (enough to rank neighbours):
  squared Euclidean, or 1 - cosine similarity of the prepared rows."""
  dots = queries @ support.T
  if metric == "cosine":
    return 1.0 - dots
  return (jnp.sum(queries * queries, axis=1, keepdims=True) - 2.0 * dots
          + jnp.sum(support * support, axis=1)[None, :])


@functools.partial(jax.jit, static_argnames=("k", "metric"))
def _nearest(queries: jax.Array, support_chunks: jax.Array, valid: jax.Array, *, k: int,
             metric: str) -> jax.Array:
  """int32 [Q, k]: the indices of each query's k nearest support rows, nearest first.

  support_chunks [chunks, S, D] (padded), valid [chunks, S]. A running top-k is
  merged with each chunk's; the running set comes first, so equal distances keep
  the lower index, as a stable sort over the whole support set would.
  """
  queries = _prepared(queries, metric)
  num_queries, chunk = queries.shape[0], support_chunks.shape[1]

  def merge(best, inputs):
    best_dist, best_index = best
    index, rows, row_valid = inputs
    dist = jnp.where(row_valid[None, :], _distances(queries, _prepared(rows, metric), metric),
                     jnp.inf)
    both = jnp.concatenate([best_dist, dist], axis=1)
    ids = jnp.concatenate([best_index, jnp.broadcast_to(
        index * chunk + jnp.arange(chunk, dtype=jnp.int32), dist.shape)], axis=1)
    neg, pos = jax.lax.top_k(-both, k)
    return (-neg, jnp.take_along_axis(ids, pos, axis=1)), None

  start = (jnp.full((num_queries, k), jnp.inf, jnp.float32),
           jnp.full((num_queries, k), -1, jnp.int32))
  steps = (jnp.arange(support_chunks.shape[0], dtype=jnp.int32), support_chunks, valid)
  (_, indices), _ = jax.lax.scan(merge, start, steps)
  return indices


def _chunked(rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
  """rows [N, D] -> ([ceil(N/size), size, D] zero-padded, valid mask [.., size])."""
  count = max(1, -(-len(rows) // size))
  padded = np.zeros((count * size,) + rows.shape[1:], np.float32)
  padded[:len(rows)] = rows
  valid = np.arange(count * size) < len(rows)
  return padded.reshape(count, size, *rows.shape[1:]), valid.reshape(count, size)


def _finite(features: np.ndarray, what: str) -> np.ndarray:
  """float32 [N, D]; a NaN or infinite feature would make every distance to it NaN."""
  features = np.asarray(features, np.float32)
  if features.ndim != 2:
    raise ValueError(f"kNN needs {what} features [N, D]; got shape {features.shape}.")
  bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
  if bad.size:
    raise ValueError(f"kNN: {what} example {int(bad[0])} has a non-finite backbone "
                     f"feature ({bad.size} such examples); check the weights and images.")
  return features


@dataclasses.dataclass(frozen=True)
class KNN:
  """The fit hook: k and the metric."""
  k: int
  metric: str

  def fit(self, features: np.ndarray, labels: np.ndarray, *, num_classes: int,
          multilabel: bool) -> "Neighbours":
    """The predictor of `features` (the support set) and their labels: int [N]
    class ids, or a {0, 1} [N, C] matrix when multilabel."""
    features = _finite(features, "training")
    if len(features) != len(labels):
      raise ValueError(f"kNN needs features [N, D] and N labels; got {features.shape} "
                       f"and {len(labels)} labels.")
    if self.k > len(features):
      raise ValueError(f"strategy_options.knn_k={self.k} is more than the {len(features)} "
                       f"training examples; set a knn_k of at most {len(features)}.")
    votes = (np.asarray(labels) > 0.5 if multilabel
             else np.eye(num_classes, dtype=bool)[np.asarray(labels, np.int64)])
    # Chunks no larger than the support set: a tiny one is not padded to 8192 rows.
    chunk = min(SUPPORT_CHUNK, len(features))
    return Neighbours(self, *_chunked(features, chunk), votes.astype(np.int32))


@dataclasses.dataclass(frozen=True)
class Neighbours:
  """A fitted kNN: the chunked support set and its one-hot (or multi-hot) labels."""
  knn: KNN
  support: np.ndarray  # float32 [chunks, S, D]
  valid: np.ndarray    # bool [chunks, S]
  votes: np.ndarray    # int32 [N, C]

  def neighbours(self, features: np.ndarray) -> np.ndarray:
    """int [M, k]: the support rows nearest to each row of `features`."""
    features = _finite(features, "query")
    if len(features) == 0:
      return np.zeros((0, self.knn.k), np.int64)
    chunks, _ = _chunked(features, min(QUERY_CHUNK, len(features)))
    support, valid = jnp.asarray(self.support), jnp.asarray(self.valid)
    found = [np.asarray(_nearest(jnp.asarray(c), support, valid, k=self.knn.k,
                                 metric=self.knn.metric)) for c in chunks]
    return np.concatenate(found)[:len(features)]

  def predict_proba(self, features: np.ndarray) -> np.ndarray:
    """float64 [M, C]: the fraction of the k neighbours in (or carrying) each class."""
    counts = self.votes[self.neighbours(features)].sum(axis=1)
    return counts.astype(np.float64) / self.knn.k


def _build(arch, options: Options) -> Built:
  del arch
  if int(options.knn_k) != options.knn_k:
    raise ValueError(f"knn_k must be a whole number, got {options.knn_k!r}.")
  # Nothing trains: the transform and plan are never run (ftjax.engine.fit takes the run).
  return Built(lambda learning_rate: optax.set_to_zero(), schedules.single({HEAD}),
               fit=KNN(int(options.knn_k), options.knn_metric))


DEFINITIONS = (
    Definition("knn", "no training: k-nearest-neighbour vote on the pretrained "
               "backbone's features (MedMNIST+'s training-free baseline)", Options, _build,
               uses_lr=False),
)
