"""The persistent JAX compilation cache a sweep's runs share.

Every run of one arch x strategy x phase x batch shape compiles the same
programs (the learning rate and seed are traced values, not constants), so the
first run of each combination compiles and writes them to the cache directory
and every later run, in any process on any host that sees the directory, loads
them instead. A sweep uses `<workdir>/.jax_cache` unless its config sets
`compilation_cache_dir` (None: that default; "": no cache).

The thresholds are lowered so that every program is cached: JAX's default keeps
only programs that took a second or more to compile, which leaves out most CPU
programs and the small evaluation steps.

A cache directory already chosen for the process (JAX_COMPILATION_CACHE_DIR, or
jax.config set by the caller) is kept: JAX reads the setting once per process.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

DEFAULT_NAME = ".jax_cache"
# jax config name -> value: cache every program, however quick or small.
SETTINGS = {
    "jax_persistent_cache_min_compile_time_secs": 0.0,
    "jax_persistent_cache_min_entry_size_bytes": -1,
}
DIR_SETTING = "jax_compilation_cache_dir"


def directory(sweep_config: Any, workdir: str | pathlib.Path) -> pathlib.Path | None:
  """The sweep's cache directory: `compilation_cache_dir`, default <workdir>/.jax_cache;
  None when the config turns the cache off ("")."""
  chosen = sweep_config.get("compilation_cache_dir", None)
  if chosen is None:
    return pathlib.Path(workdir).absolute() / DEFAULT_NAME
  return pathlib.Path(chosen).absolute() if chosen else None


def environment(cache_dir: pathlib.Path | None) -> dict[str, str]:
  """The variables that give a child process this cache (JAX reads its settings
  from upper-case environment variables); empty when there is no cache or the
  environment already names one."""
  if cache_dir is None or DIR_SETTING.upper() in os.environ:
    return {}
  return {DIR_SETTING.upper(): str(cache_dir),
          **{name.upper(): str(value) for name, value in SETTINGS.items()}}


def enable(cache_dir: pathlib.Path | None) -> str | None:
  """Points this process's JAX at `cache_dir` unless it already has a cache
  directory; returns the directory in use (None: no cache)."""
  import jax  # pylint: disable=import-outside-toplevel
  current = getattr(jax.config, DIR_SETTING)
  if current or cache_dir is None:
    return current or None
  cache_dir.mkdir(parents=True, exist_ok=True)
  jax.config.update(DIR_SETTING, str(cache_dir))
  for name, value in SETTINGS.items():
    jax.config.update(name, value)
  return str(cache_dir)


# --- Counting what the cache saves --------------------------------------------

_HIT = "/jax/compilation_cache/cache_hits"
_MISS = "/jax/compilation_cache/cache_misses"
_COMPILE = "/jax/core/compile/backend_compile_duration"  # compile, or load from the cache


@dataclasses.dataclass
class CompileStats:
  """This process's compilations since `watch()`: cache hits, misses and the
  seconds spent in XLA's compile step (loading from the cache included)."""
  hits: int = 0
  misses: int = 0
  compiles: int = 0
  compile_seconds: float = 0.0

  def to_json(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


_stats: CompileStats | None = None


def watch() -> CompileStats:
  """Starts counting (once per process; JAX listeners cannot be removed) and
  returns the live counts."""
  global _stats  # pylint: disable=global-statement
  if _stats is not None:
    return _stats
  from jax import monitoring  # pylint: disable=import-outside-toplevel
  stats = _stats = CompileStats()

  def on_event(event: str, **_) -> None:
    if event == _HIT:
      stats.hits += 1
    elif event == _MISS:
      stats.misses += 1

  def on_duration(event: str, seconds: float, **_) -> None:
    if event == _COMPILE:
      stats.compiles += 1
      stats.compile_seconds += seconds

  monitoring.register_event_listener(on_event)
  monitoring.register_event_duration_secs_listener(on_duration)
  return stats


def entries(cache_dir: pathlib.Path) -> list[pathlib.Path]:
  """The compiled programs stored in a cache directory."""
  return sorted(p for p in pathlib.Path(cache_dir).glob("*-cache") if p.is_file()) if (
      pathlib.Path(cache_dir).is_dir()) else []
