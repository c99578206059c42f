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
stop_daemons() {
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

install_packages
write_config
start_daemons
if [[ ${1:-} == --up-only ]]; then
  say "cluster up; SLURM_CONF=$SLURM_CONF; Ctrl-C stops it"
  wait
fi
