"""python -m ftjax.sweep --config configs/sweep_paper.py --workdir runs/paper

Runs the paper's grid (datasets x archs x strategies x learning rates x seeds),
one `ftjax.train` run per cell, in <workdir>/<dataset>/<arch>/<strategy>/lr<lr>/seed<seed>/.

- Resumable: a run with results.json is skipped; an interrupted run resumes from
  its checkpoint (train_and_evaluate does that); a failed run is retried by the
  next sweep, at most --max_attempts times in all (then it is listed as given up
  until --retry_failed).
- A run whose training loss became NaN/Inf (ftjax.engine.loop.TrainingDivergedError)
  would diverge again from the same config, so it is recorded in
  <run>/diverged.json, listed as diverged (not failed, exit status unaffected)
  and not retried by later sweeps unless --retry_diverged.
- Safe to start twice on one workdir: each run is guarded by a non-blocking
  `fcntl.flock` on <run>/lock; a locked run is skipped, and picked up later if
  the process holding it dies before finishing it.
- A failing run writes <run>/error.txt (and counts the attempt in
  <run>/attempts.json) and the sweep goes on; the failures are listed at the end
  and the exit status is 1. Within one sweep a run is attempted at most once.
- One device: runs in-process, one after another. Several (`--devices N`, or
  automatic when JAX sees more than one): one `python -m ftjax.train` subprocess
  per device at a time, each seeing one device (CUDA_VISIBLE_DEVICES);
  `runs_per_gpu` in the sweep config runs that many per device, without
  preallocation and each capped to its share of the memory.
- Every run of the sweep shares one persistent JAX compilation cache
  (`compilation_cache_dir`, default <workdir>/.jax_cache; ftjax.compile_cache).
- On a cluster: --launcher slurm submits the missing runs as one job array
  (ftjax.sweep.slurm; docs/distributed.md).

Subsets: --datasets isic2020,bach --strategies ft,lp --lrs 1e-4 --seeds 0,1;
--archs resnet18,resnet50 sets the architectures; --dry_run lists the runs and
their status. Every name and number is checked before a run is planned
(ftjax.sweep.args): a typo is one `error:` line naming the flag or config field,
the name and the valid names, and exit status 2. Retries: --retry_diverged,
--retry_failed, --max_attempts 3.
"""


from __future__ import annotations

import sys

from absl import app, flags
from ml_collections import config_flags

from ftjax import cli_flags
from ftjax.sweep import args as sweep_args
from ftjax.sweep import slurm
from ftjax.sweep.local import count_devices, run_sweep
from ftjax.sweep.plan import AXES, LAUNCHERS, MAX_ATTEMPTS, describe, grid, summary_lines


def main(argv) -> None:
  if len(argv) > 1:
    cli_flags.usage_error(f"unexpected arguments {argv[1:]}; every option is a --flag.")
  f = flags.FLAGS
  if f.config is None:
    cli_flags.usage_error("--config is required, e.g. --config configs/sweep_paper.py")
  # Every name and number is checked before a run is planned (a typo is one line,
  # never a grid of runs that fail, or an array submitted to the cluster).
  try:
    sweep_args.check_config(f.config)
    specs = grid(f.config, **sweep_args.choose(f.config, {a: getattr(f, a) for a in AXES}))
  except ValueError as error:
    cli_flags.usage_error(str(error))
  launcher = f.launcher or f.config.get("launcher", "local")
  if launcher not in LAUNCHERS:
    cli_flags.usage_error(f"config.launcher={launcher!r}: use one of {', '.join(LAUNCHERS)}.")
  if launcher != "local":
    try:
      sys.exit(slurm.main(f.config, f.workdir, specs, launcher, dry_run=f.dry_run,
                           wait_for_jobs=f.wait, poll_seconds=f.poll_seconds,
                           retry_diverged=f.retry_diverged, retry_failed=f.retry_failed,
                           max_attempts=f.max_attempts))
    except slurm.LaunchError as error:
      print(f"error: {error}", file=sys.stderr)
      sys.exit(1)
  if f.dry_run:
    print(describe(specs, f.workdir, f.config.base))
    return
  devices = f.devices if f.devices > 0 else count_devices()
  print(f"{len(specs)} runs in {f.workdir} on {devices} device(s) "
        f"({'subprocesses' if devices > 1 else 'in-process'}).", flush=True)
  summary = run_sweep(f.config, f.workdir, specs, devices=devices,
                      poll_seconds=f.poll_seconds, retry_diverged=f.retry_diverged,
                      retry_failed=f.retry_failed, max_attempts=f.max_attempts)
  out, err = summary_lines(summary, f.workdir, f.max_attempts)
  print("\n".join(out), flush=True)
  if err:
    print("\n".join(err), file=sys.stderr)
  if not summary.ok:
    sys.exit(1)


def cli() -> None:
  config_flags.DEFINE_config_file("config", None, "sweep config file (configs/sweep_paper.py);"
                                  " override with --config.base.num_epochs=10 etc.")
  flags.DEFINE_string("workdir", "runs/paper", "root of the run directories")
  for _axis in AXES:
    flags.DEFINE_string(_axis, None, "comma-separated architectures to run (any of the "
                        "registry's; replaces the config's)" if _axis == "archs" else
                        f"comma-separated subset of the sweep's {_axis}")
  flags.DEFINE_boolean("dry_run", False, "list the runs and their status; run nothing "
                       "(--launcher slurm: also print the sbatch script)")
  flags.DEFINE_enum("launcher", None, LAUNCHERS, "where runs go: local (this machine), "
                    "slurm (one job array, ftjax.sweep.slurm) or submitit_local (the job path as "
                    "local processes); default: the config's launcher field, else local")
  flags.DEFINE_boolean("wait", False, "--launcher slurm: wait until the submitted jobs "
                       "leave the queue, then show the status (exit 1 if runs are missing)")
  flags.DEFINE_integer("devices", 0, "runs at once, one per device (subprocesses); "
                       "0: jax.local_device_count()")
  flags.DEFINE_float("poll_seconds", 10.0, "wait between checks on runs locked by another "
                     "sweep, or on submitted jobs (--wait)")
  flags.DEFINE_boolean("retry_diverged", False, "also run again the runs an earlier sweep "
                       "recorded as diverged (<run>/diverged.json); they resume from their "
                       "last good checkpoint with the same config")
  flags.DEFINE_boolean("retry_failed", False, "also run again the runs that already failed "
                       "--max_attempts times")
  flags.DEFINE_integer("max_attempts", MAX_ATTEMPTS, "failed attempts after which later "
                       "sweeps stop retrying a run", lower_bound=1)
  app.run(main, flags_parser=cli_flags.parse)


if __name__ == "__main__":
  cli()
