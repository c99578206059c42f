"""One run's directory: what a run keeps on disk, and the identity of its result.

  <workdir>/config.json     the full config of the run
  <workdir>/identity.json   every field that can change the result, and its hash
  <workdir>/metrics.jsonl   one line per epoch (rgn.jsonl: Auto-RGN's weights)
  <workdir>/checkpoints/    latest and best (ftjax.engine.checkpoints)
  <workdir>/results.json    written once, when the run has finished
  <workdir>/predictions/    validation.npz and test.npz: the best epoch's per-example
                            scores, labels, ids and patient ids (ftjax.engine.evaluation),
                            written just before results.json
  <workdir>/lock            flock held by the process training the run

A study's runs live at `<dataset>/<arch>/<strategy>/lr<lr>/seed<seed>` under
its workdir (`relative_path`, the one place that layout is spelled). A run is
identified by the hash of `identity_fields`: the config less the fields that
cannot change the result (RUNTIME_FIELDS), plus fingerprints of the prepared
data and of the converted weights. A directory holding a run of another
identity is never resumed, reused or counted: `claim` refuses it naming the
differing fields, or with overwrite=True moves it aside (never deletes it).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pathlib
import re
import sys
from typing import IO, Any, Callable

# How a run shows progress or where it finds its inputs: not what it computes.
# (The prepared data and the weights enter the identity by fingerprint.)
RUNTIME_FIELDS = frozenset({"progress", "prefetch", "data_dir", "weights_dir"})
IDENTITY_VERSION = 1
# Set by a sweep for the training subprocess of a run whose lock it holds.
LOCK_HELD_ENV = "FTJAX_RUN_LOCK_HELD"
LAYOUT = re.compile(r"^(?P<dataset>[^/]+)/(?P<arch>[^/]+)/(?P<strategy>[^/]+)/"
                    r"lr(?P<lr>[^/]+)/seed(?P<seed>-?\d+)$")


# The fix for each way a workdir can refuse to be written.
WORKDIR_FIXES = {
    errno.ENOSPC: "the disk is full: free some space or use a --workdir on another disk",
    errno.EDQUOT: "the disk quota is exhausted: free some space or use a --workdir "
                  "on another disk",
    errno.EACCES: "permission denied: make it writable (chmod/chown) or use another "
                  "--workdir",
    errno.EPERM: "permission denied: make it writable (chmod/chown) or use another "
                 "--workdir",
    errno.EROFS: "the file system is read-only: use a --workdir on a writable disk",
    errno.ENOTDIR: "a file stands where a folder is needed: use another --workdir",
    errno.EEXIST: "a file stands where a folder is needed: use another --workdir",
}
LOGS = ("metrics.jsonl", "rgn.jsonl")


class RunMismatch(ValueError):
  """The directory holds a run of another identity."""


class RunLocked(ValueError):
  """Another process is training this run."""


class RunVanished(FileNotFoundError):
  """The run's directory (its identity.json) disappeared while the run trained."""


def relative_path(dataset: str, arch: str, strategy: str, lr: float, seed: int) -> str:
  """The sweep layout: `<dataset>/<arch>/<strategy>/lr<lr>/seed<seed>`."""
  return f"{dataset}/{arch}/{strategy}/lr{float(lr):g}/seed{int(seed)}"


def parse_relative_path(path: str) -> dict[str, Any] | None:
  """The inverse of `relative_path`, or None for a path outside the layout."""
  m = LAYOUT.match(path)
  if m is None:
    return None
  try:
    lr = float(m["lr"])
  except ValueError:
    return None
  fields = {"dataset": m["dataset"], "arch": m["arch"], "strategy": m["strategy"],
            "lr": lr, "seed": int(m["seed"])}
  return fields if relative_path(**fields) == path else None


def file_fingerprint(path: pathlib.Path) -> str:
  """Hex sha256 of a file, read in 1 MiB chunks."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def identity_fields(config: dict[str, Any], *, data_fingerprint: str,
                    weights_fingerprint: str | None) -> dict[str, Any]:
  """Every value that can change the run's result, as plain JSON.

  num_workers is one: each grain worker batches its own share, so the worker
  count changes the batch order. Unset dataset options are dropped (they keep
  the dataset's default either way).
  """
  fields = {k: v for k, v in config.items() if k not in RUNTIME_FIELDS}
  fields["dataset_options"] = {k: v for k, v in
                               dict(fields.get("dataset_options") or {}).items()
                               if v is not None}
  fields["data_fingerprint"] = data_fingerprint
  fields["weights_fingerprint"] = weights_fingerprint
  fields["identity_version"] = IDENTITY_VERSION
  return json.loads(json.dumps(fields, sort_keys=True))


def identity_hash(fields: dict[str, Any]) -> str:
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
  """'field: old -> new' for each differing (nested) field."""
  out = []
  for key in sorted(set(saved) | set(current)):
    a, b = saved.get(key), current.get(key)
    if isinstance(a, dict) and isinstance(b, dict):
      out += differences(a, b, f"{prefix}{key}.")
    elif a != b:
      out.append(f"{prefix}{key}: {a!r} -> {b!r}")
  return out


def replace_atomically(path: pathlib.Path, write: Callable[[IO[bytes]], Any]) -> None:
  """`write(file)` into a temporary file, synced, then renamed to `path` (its folder
  created), so a kill never leaves half a file."""
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.tmp")
  with open(tmp, "wb") as f:
    write(f)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def write_atomic(path: pathlib.Path, text: str) -> None:
  """`text` (UTF-8) to `path` by `replace_atomically`."""
  replace_atomically(path, lambda f: f.write(text.encode()))


class RunLock:
  """A non-blocking exclusive flock on <run>/lock; `acquire` says if it got it.

  flock locks belong to the open file, so two processes (or two RunLock objects
  in one process) exclude each other, and a dead process's lock is released by
  the kernel: no stale lock files to clean up.
  """

  def __init__(self, run_dir: pathlib.Path):
    self.path = pathlib.Path(run_dir) / RunDir.LOCK
    self._fd: int | None = None

  def acquire(self) -> bool:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      os.close(fd)
      return False
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    self._fd = fd
    return True

  def holder(self) -> str:
    try:
      return self.path.read_text().strip() or "?"
    except OSError:
      return "?"

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None


class RunDir:
  """Everything on disk for one run."""

  CONFIG, IDENTITY, RESULTS, LOCK = "config.json", "identity.json", "results.json", "lock"
  PREDICTIONS = "predictions"  # folder: <split>.npz per evaluated split

  def __init__(self, path: str | pathlib.Path):
    self.path = pathlib.Path(path)

  def __truediv__(self, name: str) -> pathlib.Path:
    return self.path / name

  def saved_identity(self) -> dict[str, Any] | None:
    """identity.json's {'hash', 'fields'}; None if absent; {} if unreadable."""
    path = self.path / self.IDENTITY
    if not path.exists():
      return None
    try:
      saved = json.loads(path.read_text())
      return saved if isinstance(saved, dict) and isinstance(saved.get("fields"), dict) else {}
    except (OSError, ValueError):
      return {}

  def holds_run(self) -> bool:
    return any((self.path / n).exists() for n in (self.CONFIG, self.IDENTITY, self.RESULTS,
                                                   "checkpoints"))

  def matches(self, fields: dict[str, Any]) -> bool:
    saved = self.saved_identity()
    return bool(saved) and saved.get("hash") == identity_hash(fields) \
        and saved["fields"] == fields

  def is_finished(self, fields: dict[str, Any]) -> bool:
    """results.json of a run with exactly this identity."""
    return (self.path / self.RESULTS).exists() and self.matches(fields)

  def mismatch(self, fields: dict[str, Any]) -> str | None:
    """Why this directory cannot hold a run with `fields`, or None if it can."""
    if not self.holds_run():
      return None
    saved = self.saved_identity()
    if saved is None:
      return "it holds a run without identity.json (another run, or an older ftjax)"
    if not saved:
      return f"its {self.IDENTITY} is unreadable"
    if self.matches(fields):
      return None
    diffs = differences(saved["fields"], fields)
    return ("it holds a run with another identity ("
            + ("; ".join(diffs) if diffs else "hash differs") + ")")

  def claim(self, fields: dict[str, Any], *, overwrite: bool = False) -> pathlib.Path | None:
    """Makes this directory the run's: refuses another identity, or moves it aside.

    Returns where an old run was moved, or None.
    """
    why = self.mismatch(fields)
    if why is None:
      return None
    if not overwrite:
      raise RunMismatch(f"{self.path}: {why}. Use another --workdir, or --overwrite to "
                        f"move the old run aside (it is kept, not deleted).")
    return self.set_aside()

  def set_aside(self) -> pathlib.Path:
    """Renames the directory to <name>.old-<n> (the first free n)."""
    n = 1
    while (aside := self.path.with_name(f"{self.path.name}.old-{n}")).exists():
      n += 1
    os.replace(self.path, aside)
    return aside

  def write_identity(self, config: dict[str, Any], fields: dict[str, Any]) -> None:
    write_atomic(self.path / self.CONFIG, json.dumps(config, indent=2) + "\n")
    write_atomic(self.path / self.IDENTITY, json.dumps(
        {"hash": identity_hash(fields), "fields": fields}, indent=2, sort_keys=True) + "\n")

  def check_present(self) -> None:
    """RunVanished if identity.json is gone: the directory was deleted, moved or
    unmounted under the running process (writing on would create a run without
    identity, in pieces)."""
    if not (self.path / self.IDENTITY).exists():
      raise RunVanished(
          f"{self.path}: the run directory vanished while the run trained (deleted, "
          f"moved, or its disk unmounted); training stopped and nothing more was written "
          f"there. If you moved it, move it back and rerun the same command to resume; "
          f"otherwise rerun it to start the run again.")

  def read_config(self) -> dict[str, Any]:
    """config.json; a missing or damaged one is a ValueError naming the fix."""
    path = self.path / self.CONFIG
    if not path.exists():
      raise FileNotFoundError(f"{path}: not found; is {self.path} a run directory of "
                              f"python -m ftjax.train?")
    try:
      config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as error:
      config = error
    if not isinstance(config, dict):
      raise ValueError(f"{path}: damaged (not a JSON object). Rerun the run's "
                       f"python -m ftjax.train command: it rewrites config.json of a run "
                       f"whose identity.json is intact.")
    return config

  def repair_config(self, config: dict[str, Any], fields: dict[str, Any]) -> bool:
    """Rewrites a missing or damaged config.json of a run of exactly this identity
    (identity.json is intact, so nothing about the run is in doubt)."""
    if not self.matches(fields):
      return False
    try:
      self.read_config()
      return False
    except (FileNotFoundError, ValueError):
      write_atomic(self.path / self.CONFIG, json.dumps(config, indent=2) + "\n")
      print(f"warning: {self.path / self.CONFIG} was missing or damaged; written again "
            f"from this run's config (its identity.json matches).", file=sys.stderr)
      return True

  def claim_and_record(self, config: dict[str, Any], fields: dict[str, Any], *,
                       overwrite: bool = False) -> pathlib.Path | None:
    """`claim`, then write config.json and identity.json unless they already hold
    this identity. Returns where an old run was moved."""
    aside = self.claim(fields, overwrite=overwrite)
    if aside is not None:
      print(f"{self.path}: the run there had another identity; moved it to {aside}.")
    if not self.matches(fields):
      self.check_writable()
      self.write_identity(config, fields)
    return aside

  def check_writable(self, probe_bytes: int = 1 << 16) -> None:
    """Creates the directory and writes a small probe file, so that a read-only or
    full disk fails now, with the fix, instead of at the first checkpoint."""
    probe = self.path / f".write_probe.{os.uname().nodename}.{os.getpid()}"
    try:
      self.path.mkdir(parents=True, exist_ok=True)
      fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
      try:
        os.write(fd, b"\0" * probe_bytes)
        os.fsync(fd)
      finally:
        os.close(fd)
        probe.unlink(missing_ok=True)
    except OSError as error:
      if error.errno not in WORKDIR_FIXES:
        raise
      raise ValueError(f"workdir {self.path.absolute()} is not writable "
                       f"({os.strerror(error.errno)}); {WORKDIR_FIXES[error.errno]}."
                       ) from error

  def trim_logs(self, epochs_done: int) -> None:
    """Drops log lines of epochs a killed run wrote but did not checkpoint (they are
    run again) and a half-written last line."""
    for name in LOGS:
      path = self.path / name
      if not path.exists():
        continue
      text = path.read_text()
      kept = []
      for line in text.splitlines():
        try:
          if json.loads(line)["epoch"] < epochs_done:
            kept.append(line)
        except (ValueError, KeyError, TypeError):
          continue
      trimmed = "".join(line + "\n" for line in kept)
      if trimmed != text:
        write_atomic(path, trimmed)

  def lock(self) -> RunLock:
    """The run's lock, held: RunLocked if another process holds it."""
    lock = RunLock(self.path)
    if not lock.acquire():
      raise RunLocked(f"{self.path}: another process (pid {lock.holder()}) is training this "
                      f"run; wait for it to finish, or use another --workdir.")
    return lock


def run_identity(config: Any, builder: Any) -> dict[str, Any]:
  """The identity fields of a run of `config` on the prepared `builder`'s data."""
  from ftjax.models import pretrained, registry  # pylint: disable=import-outside-toplevel
  weights = None
  if config.init == "pretrained":
    arch = registry.get_arch(config.arch)
    weights = file_fingerprint(
        pretrained.resolve_weights_dir(arch, config.weights_dir) / pretrained.MANIFEST)
  return identity_fields(
      json.loads(config.to_json_best_effort()),
      data_fingerprint=file_fingerprint(pathlib.Path(builder.data_path) / "dataset_info.json"),
      weights_fingerprint=weights)


# --- A run directory's status, as a sweep sees it ------------------------------

ERROR_NAME = "error.txt"
DIVERGED_NAME = "diverged.json"
ATTEMPTS_NAME = "attempts.json"  # failed attempts so far, to bound retries
RESULTS_NAME = "results.json"
RUN_CONFIG_NAME = "run_config.json"  # the run's full config, for subprocess runs


def is_done(run_dir: pathlib.Path, identity: dict[str, Any] | None) -> bool:
  """results.json of a run with exactly this identity. Without an identity (it
  cannot be computed yet) nothing counts as done: the run is attempted, and
  train either finds it finished or says what is missing."""
  return identity is not None and RunDir(run_dir).is_finished(identity)


def failed_attempts(run_dir: pathlib.Path) -> int:
  """Failed attempts recorded for the run (0 if none or unreadable)."""
  try:
    return int(json.loads((run_dir / ATTEMPTS_NAME).read_text())["failed"])
  except (OSError, ValueError, KeyError, TypeError):
    return 0


def diverged_error(run_dir: pathlib.Path) -> str:
  """The error line recorded in <run>/diverged.json."""
  try:
    return str(json.loads((run_dir / DIVERGED_NAME).read_text())["error"])
  except (OSError, ValueError, KeyError, TypeError):
    return "training diverged"


def status(run_dir: pathlib.Path, identity: dict[str, Any] | None = None) -> str:
  """done | other (holds a run of another identity) | unverified (finished, but this
  run's identity cannot be computed: data or weights missing) | running (locked by
  a process) | diverged | failed | partial | pending."""
  if is_done(run_dir, identity):
    return "done"
  if identity is None and (run_dir / RESULTS_NAME).exists():
    return "unverified"
  if identity is not None and RunDir(run_dir).mismatch(identity):
    return "other"
  if (run_dir / RunDir.LOCK).exists():
    lock = RunLock(run_dir)
    if not lock.acquire():
      return "running"
    lock.release()
  if (run_dir / DIVERGED_NAME).exists():
    return "diverged"
  if (run_dir / ERROR_NAME).exists():
    return "failed"
  if (run_dir / "config.json").exists():
    return "partial"
  return "pending"
