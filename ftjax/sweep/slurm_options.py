"""What each array task asks SLURM for (the sweep config's `slurm` fields), checked.

Every value that reaches the sbatch script submitit writes is checked before
anything is planned or submitted: a line break in a value would start a line of
its own in the script (`#SBATCH --partition=gpu` then a `#SBATCH` line of the
value's choosing), and a non-positive number is a script SLURM refuses, or, for
`--mem=0`, one that takes a whole node's memory. The script's lines and where
they come from (submitit.slurm.slurm._make_sbatch_string):

  --partition --account --qos     slurm.partition / account / qos (names)
  --time                          slurm.timeout_min (whole minutes >= 1)
  --cpus-per-task                 slurm.cpus_per_task (>= 1)
  --gpus-per-task                 slurm.gpus_per_task (>= 0; 0 leaves it out)
  --mem                           slurm.mem_gb (> 0, at least 1 MB)
  --array=0-N%P                   the runs; P = slurm.array_parallelism (>= 1)
  --job-name, --output, --error   the workdir (ftjax.sweep.slurm checks it)
  --nodes, --ntasks-per-node, --open-mode, --signal, --wckey: fixed
  anything else                   slurm.additional, name=value pairs
slurm.max_requeues (>= 0) is not in the script: submitit requeues that often.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Mapping

import ml_collections

# Control characters (line breaks included) end or corrupt a line of the script.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SBATCH_NAME = re.compile(r"[a-z][a-z0-9_-]*")
# sbatch flags the launcher writes itself: additional must not replace them.
_SET_BY_FIELD = {"time": "timeout_min", "cpus-per-task": "cpus_per_task",
                 "gpus-per-task": "gpus_per_task", "mem": "mem_gb", "partition": "partition",
                 "account": "account", "qos": "qos"}
_SET_BY_LAUNCHER = ("array", "job-name", "output", "error", "open-mode", "signal", "nodes",
                    "ntasks-per-node")
# field -> (smallest value, what it counts) for the whole-number fields.
_WHOLE = {"gpus_per_task": (0, "GPUs per run"), "cpus_per_task": (1, "CPUs per run"),
          "timeout_min": (1, "minutes"), "array_parallelism": (1, "tasks running at once"),
          "max_requeues": (0, "requeues after a time limit")}


class LaunchError(RuntimeError):
  """The launcher cannot go on (no squeue, an unreadable record, a bad setting); the
  message names the fix."""


def check_text(where: str, value: str, *, spaces: bool = True) -> str:
  """A value written into the sbatch script: no control character (no line break),
  and without `spaces` no blank either (SLURM names have none)."""
  bad = _CONTROL.search(value) or (None if spaces else re.search(r"\s", value))
  if bad:
    raise LaunchError(f"{where}={value!r}: holds {bad.group()!r} at position {bad.start()}; "
                      f"a value of the sbatch script is one line"
                      f"{'' if spaces else ' without blanks'}.")
  return value


@dataclasses.dataclass(frozen=True)
class SlurmOptions:
  """What each array task asks SLURM for; every field checked on construction."""
  partition: str | None = None
  account: str | None = None
  qos: str | None = None
  gpus_per_task: int = 1
  cpus_per_task: int = 8
  mem_gb: float = 32
  timeout_min: int = 240
  array_parallelism: int = 64
  max_requeues: int = 3
  additional: str | Mapping[str, str] = ""

  def __post_init__(self):
    for name in ("partition", "account", "qos"):
      value = getattr(self, name)
      if value is not None and not isinstance(value, str):
        raise LaunchError(f"config.slurm.{name}={value!r}: must be a name (text).")
      if value:
        check_text(f"config.slurm.{name}", value, spaces=False)
    for name, (least, unit) in _WHOLE.items():
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise LaunchError(f"config.slurm.{name}={value!r}: must be a whole number of "
                          f"{unit} >= {least}.")
    mem = self.mem_gb
    if (isinstance(mem, bool) or not isinstance(mem, (int, float)) or not math.isfinite(mem)
        or round(mem * 1024) < 1):
      raise LaunchError(f"config.slurm.mem_gb={mem!r}: must be a finite number of GB > 0 "
                        f"(at least 1 MB, 0.001).")
    self.additional_sbatch()

  @classmethod
  def from_config(cls, sweep_config: ml_collections.ConfigDict) -> "SlurmOptions":
    given = dict(sweep_config.get("slurm", None) or {})
    unknown = sorted(set(given) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
      raise LaunchError(f"config.slurm: unknown field(s) {unknown}; known: "
                        f"{[f.name for f in dataclasses.fields(cls)]}.")
    return cls(**{k: v for k, v in given.items() if v is not None})

  def memory(self) -> str:
    """--mem: whole GB as such, else MB (as submitit writes it), never rounded to 0."""
    if float(self.mem_gb).is_integer():
      return f"{int(self.mem_gb)}GB"
    return f"{round(self.mem_gb * 1024)}MB"

  def sbatch_parameters(self, job_name: str) -> dict[str, Any]:
    """submitit's SlurmExecutor parameters (the names of its `update_parameters`)."""
    params: dict[str, Any] = {
        "job_name": job_name, "time": self.timeout_min, "cpus_per_task": self.cpus_per_task,
        "mem": self.memory(), "array_parallelism": self.array_parallelism,
        "ntasks_per_node": 1, "additional_parameters": self.additional_sbatch()}
    if self.gpus_per_task:
      params["gpus_per_task"] = self.gpus_per_task
    for name in ("partition", "account", "qos"):
      if getattr(self, name):
        params[name] = getattr(self, name)
    return params

  def additional_sbatch(self) -> dict[str, str]:
    """slurm.additional ('name=value,...' or a mapping) as sbatch flags, each checked."""
    if isinstance(self.additional, Mapping):
      pairs = [(str(k), str(v)) for k, v in self.additional.items()]
    else:
      items = [p.strip() for p in str(self.additional).split(",") if p.strip()]
      bad = [p for p in items if "=" not in p]
      if bad:
        raise LaunchError(f"config.slurm.additional: {bad} is not name=value; write e.g. "
                          f"'constraint=a100,mail-type=END'.")
      pairs = [tuple(p.split("=", 1)) for p in items]
    out: dict[str, str] = {}
    for key, value in pairs:
      _check_additional(key.strip(), value.strip(), out)
      out[key.strip()] = value.strip()
    return out


def _check_additional(key: str, value: str, seen: dict[str, str]) -> None:
  where = f"config.slurm.additional: {key!r}"
  check_text(f"config.slurm.additional[{key!r}]", key)
  if not _SBATCH_NAME.fullmatch(key):
    raise LaunchError(f"{where} is not an sbatch flag name (lowercase letters, digits, '-' "
                      f"and '_', starting with a letter, without the leading '--').")
  flag = key.replace("_", "-")
  if flag in _SET_BY_FIELD:
    raise LaunchError(f"{where}: set --{flag} with config.slurm.{_SET_BY_FIELD[flag]}.")
  if flag in _SET_BY_LAUNCHER:
    raise LaunchError(f"{where}: --{flag} is written by the launcher (one array task per "
                      f"run, logs in <workdir>/.submitit, the requeue signal).")
  if any(k.replace("_", "-") == flag for k in seen):
    raise LaunchError(f"{where} is given twice; give each flag once.")
  if not value:
    raise LaunchError(f"{where} has no value; write name=value.")
  check_text(f"config.slurm.additional[{key!r}]", value)
