#!/usr/bin/env bash
# A single-node SLURM cluster on localhost, and a tiny sweep submitted to it as a
# job array through `python -m ftjax.sweep --launcher slurm`; the results are
# checked against the same sweep run locally.
#
#   sudo scripts/slurm_local.sh            # root on Debian/Ubuntu: installs what it needs
#
# Installs slurm-wlm and munge with apt-get (if missing), writes a slurm.conf for
# this host under $FTJAX_SLURM_DIR (default /tmp/ftjax-slurm), starts munged,
# slurmctld and slurmd there, submits, waits, checks, and stops the daemons.
#
# Exit status: 0 the cluster ran the sweep and its results equal the local
# sweep's; 1 it ran and something is wrong (a bug); 2 not root on Debian; 3 this
# machine cannot run the SLURM daemons (a sandbox without the kernel features
# slurmd needs): their own error lines are printed.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
STATE=${FTJAX_SLURM_DIR:-/tmp/ftjax-slurm}
HOST=$(hostname -s)
CANNOT_RUN=3

say() { echo "slurm_local: $*"; }

if [[ $(id -u) != 0 ]] || ! grep -qiE '^ID(_LIKE)?=.*(debian|ubuntu)' /etc/os-release; then
  say "needs root on Debian/Ubuntu (apt-get, daemons); skipped."
  exit 2
fi

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
      && command -v munged >/dev/null && command -v sbatch >/dev/null; then
    return
  fi
  say "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
}

write_config() {
  rm -rf "$STATE"
  mkdir -p "$STATE"/{ctld,spool,log,run}
  local cpus mem_mb
  cpus=$(nproc)
  mem_mb=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)
  # No cgroups (proctrack/linuxproc, task/none): containers rarely delegate them.
  cat > "$STATE/slurm.conf" <<EOF
ClusterName=ftjax-local
SlurmctldHost=$HOST
SlurmctldPort=6917
SlurmdPort=6918
AuthType=auth/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
KillWait=30
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
}

PIDS=()
STARTED_MUNGE=0
stop_daemons() {
  if [[ $STARTED_MUNGE == 1 && -s /run/munge/munged.pid ]]; then
    PIDS+=("$(cat /run/munge/munged.pid)")
  fi
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
}
trap stop_daemons EXIT

daemon_errors() {
  # The daemons' own words: their stderr and the error/fatal lines of their logs.
  grep -hiE 'error|fatal|cannot|failed' "$STATE"/log/*.log "$STATE"/log/*.err 2>/dev/null \
    | tail -n 40 || true
}

cannot_run() {
  say "this machine cannot run a SLURM cluster: $1"
  say "the daemons said:"
  daemon_errors | sed 's/^/  /'
  exit $CANNOT_RUN
}

start_daemons() {
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge 2>/dev/null || true
  [[ -s /etc/munge/munge.key ]] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 \
      status=none; chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force 2>"$STATE/log/munged.err" \
      || cannot_run "munged did not start"
    STARTED_MUNGE=1
    sleep 1
  fi
  export SLURM_CONF=$STATE/slurm.conf
  /usr/sbin/slurmctld -D -f "$SLURM_CONF" 2>"$STATE/log/slurmctld.err" &
  PIDS+=($!)
  /usr/sbin/slurmd -D -f "$SLURM_CONF" 2>"$STATE/log/slurmd.err" &
  PIDS+=($!)
  local i
  for i in $(seq 1 60); do
    for pid in "${PIDS[@]}"; do
      kill -0 "$pid" 2>/dev/null || cannot_run "a daemon exited (pid $pid)"
    done
    if sinfo -h -N -o '%t' 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
      say "node $HOST is up ($(sinfo -h -N -o '%t %c CPUs'))"
      return
    fi
    sleep 1
  done
  cannot_run "node $HOST did not become idle within 60 s (sinfo: $(sinfo -h -N -o '%t %E' 2>&1))"
}

# The tiny sweep: configs/sweep_demo.py shrunk to seconds per run, ft and lp x 2 seeds.
SWEEP_ARGS=(--config configs/sweep_demo.py
  --config.base.data_dir="$STATE/data" --config.base.dataset_options.num_train=96
  --config.base.dataset_options.num_test=48 --config.base.resize=36 --config.base.crop=32
  --config.base.batch_size=16 --config.base.eval_batch_size=32 --config.base.num_epochs=2
  --strategies=ft,lp --lrs=1e-3 --seeds=0,1)
SLURM_ARGS=(--launcher slurm --config.slurm.partition=debug --config.slurm.gpus_per_task=0
  --config.slurm.cpus_per_task=1 --config.slurm.mem_gb=3 --config.slurm.timeout_min=20)

fail() { say "FAILED: $*"; exit 1; }

preempt_first_task() {
  # As SLURM preempts a job: SIGTERM to the first task's step once its run has started.
  # Prints the task's job id.
  local run=synthetic/resnet18/ft/lr0.001/seed0 i job
  for i in $(seq 1 600); do
    [[ -e "$STATE/runs/$run/config.json" ]] && break
    sleep 0.5
  done
  [[ -e "$STATE/runs/$run/config.json" ]] || return 1
  job=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["job_id"])' \
        "$STATE/runs/.submitit/submitted.json" "$run")
  scancel --signal=TERM "$job" >&2 || true  # checked below, by the task's log
  # SLURM holds a requeued job for about two minutes (EligibleTime); release it as soon
  # as the task has requeued itself, to keep CI short.
  local log=$STATE/runs/.submitit/$job/${job}_0_log.err
  for i in $(seq 1 600); do
    grep -q "Requeued job" "$log" 2>/dev/null && break
    sleep 0.5
  done
  scontrol update JobId="$job" StartTime=now >&2 2>/dev/null || true
  echo "$job"
}

run_sweep_on_slurm() {
  export JAX_PLATFORMS=cpu  # the jobs inherit the submitting environment
  local out
  "$PYTHON" -m ftjax.sweep "${SWEEP_ARGS[@]}" "${SLURM_ARGS[@]}" --workdir "$STATE/runs" \
      --dry_run | tail -n 30
  say "submitting the job array"
  "$PYTHON" -m ftjax.sweep "${SWEEP_ARGS[@]}" "${SLURM_ARGS[@]}" --workdir "$STATE/runs" \
      --wait --poll_seconds 2 &
  local sweep_pid=$! job
  job=$(preempt_first_task) || fail "the first run did not start within 300 s"
  wait "$sweep_pid" || { tail -n 40 "$STATE"/runs/.submitit/*/*log.err 2>/dev/null;
                         fail "the job array did not finish every run"; }
  grep -q "asking to be requeued" "$STATE/runs/.submitit/$job/${job}_0_log.out" \
    || fail "task $job did not stop at an epoch's end and ask to be requeued"
  grep -q "resuming after epoch" "$STATE/runs/.submitit/$job/${job}_0_log.out" \
    || fail "task $job was not requeued, or did not resume from its checkpoint"
  say "task $job: preempted (SIGTERM), requeued, resumed from its checkpoint"
  out=$("$PYTHON" -m ftjax.sweep "${SWEEP_ARGS[@]}" "${SLURM_ARGS[@]}" --workdir "$STATE/runs")
  echo "$out" | tail -n 1
  grep -q "4 runs: 4 done; 0 to submit." <<<"$out" || fail "a second submit found runs missing"
  say "the same sweep locally, for comparison"
  "$PYTHON" -m ftjax.sweep "${SWEEP_ARGS[@]}" --workdir "$STATE/local" --devices 1 \
      --config.compilation_cache_dir="$STATE/runs/.jax_cache" >/dev/null \
      || fail "the local sweep failed"
  "$PYTHON" - "$STATE/runs" "$STATE/local" <<'PY' || fail "SLURM's results differ from the local sweep's"
import json, pathlib, sys
slurm, local = map(pathlib.Path, sys.argv[1:])
runs = sorted(p.relative_to(local) for p in local.rglob("results.json"))
assert len(runs) == 4, runs
for run in runs:
    a, b = (json.loads((root / run).read_text()) for root in (slurm, local))
    for key in ("validation", "test", "best_epoch", "epochs_run"):
        assert a[key] == b[key], (str(run), key, a[key], b[key])
print(f"slurm_local: {len(runs)} runs from the job array equal the local sweep's")
PY
}

install_packages
write_config
start_daemons
if [[ ${1:-} == --up-only ]]; then
  say "cluster up; SLURM_CONF=$SLURM_CONF; Ctrl-C stops it"
  wait
fi
run_sweep_on_slurm
say "OK"
