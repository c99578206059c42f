"""Running one run: the checked experiment, the epoch loop and its runners, checkpoints,
training-free fits, cached features, evaluation, and `training.train_and_evaluate`.

Imports point down: the engine uses `ftjax.step`, `ftjax.run`, `ftjax.data`,
`ftjax.models` and `ftjax.strategies`; the commands (`ftjax.train`, `ftjax.evaluate`,
`ftjax.multirun`, the sweep) use the engine. This package's `__init__` imports nothing,
so `from ftjax.engine import loop` loads only what `loop` needs.
"""
