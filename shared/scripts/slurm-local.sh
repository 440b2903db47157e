#!/usr/bin/env bash
# A single-node Slurm on localhost for tests (root, Debian): install, start, status, stop.
#
#   bash shared/scripts/slurm-local.sh start    # installs slurmctld/slurmd/munge when missing, writes slurm.conf, starts
#   bash shared/scripts/slurm-local.sh status
#   bash shared/scripts/slurm-local.sh stop
#
# The node gets this machine's CPUs and most of its memory; one partition "debug" (default).
set -euo pipefail
cmd=${1:-start}
CONF=/etc/slurm/slurm.conf

need_root() { [ "$(id -u)" = 0 ] || { echo "slurm-local: must run as root (it installs packages and starts daemons)" >&2; exit 1; }; }

node_up() { sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; }

install() {
  local missing=()
  for t in slurmctld slurmd sbatch munged; do command -v $t >/dev/null 2>&1 || missing+=($t); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "[slurm-local] apt-get install slurmctld slurmd slurm-client munge"
  export DEBIAN_FRONTEND=noninteractive
  (apt-get update -qq && apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge) >/tmp/slurm-apt.log 2>&1 \
    || { tail -5 /tmp/slurm-apt.log >&2; exit 1; }
}

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  cat > $CONF <<CONF
ClusterName=local
SlurmctldHost=$host
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmUser=root
SlurmdUser=root
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=600
# A requeued job waits for the job credential to expire before it can start again (default 120 s); keep the
# wait short on this test cluster. (Starting it earlier fails with "Job credential revoked".)
AuthInfo=cred_expire=10
KillWait=30
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
  need_root
  if node_up; then echo "[slurm-local] already running"; sinfo; return 0; fi
  install
  write_conf
  [ -f /etc/munge/munge.key ] || { mkdir -p /etc/munge; dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chmod 400 /etc/munge/munge.key; }
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  pgrep -x munged >/dev/null || munged --force 2>/dev/null || munged --force
  pgrep -x slurmctld >/dev/null || slurmctld
  pgrep -x slurmd >/dev/null || slurmd
  for _ in $(seq 1 60); do
    if node_up; then echo "[slurm-local] up"; sinfo; return 0; fi
    # A node left DOWN by an earlier unclean stop comes back with this.
    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    sleep 1
  done
  echo "[slurm-local] node did not come up; logs in /var/log/slurm" >&2
  tail -20 /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log >&2 || true
  exit 1
}

stop() {
  scontrol shutdown >/dev/null 2>&1 || true
  sleep 1
  pkill -x slurmd 2>/dev/null || true
  pkill -x slurmctld 2>/dev/null || true
  pkill -x munged 2>/dev/null || true
  echo "[slurm-local] stopped"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) if node_up; then sinfo; else echo "[slurm-local] not running"; exit 1; fi ;;
  *) echo "usage: slurm-local.sh start|stop|status" >&2; exit 2 ;;
esac
