#!/usr/bin/env bash
# A real single-node Slurm on this machine, for testing the sweep's Slurm launcher (tests/test_sweep_slurm.py).
#
#   bash scripts/local_slurm.sh start DIR   # munged + slurmctld + slurmd; prints the SLURM_CONF to export
#   bash scripts/local_slurm.sh stop DIR    # stops the three daemons by their pid files
#
# Installs nothing: it needs Debian's `slurm-wlm` and `munge` (apt-get install slurm-wlm munge) and root. Settings
# for machines without systemd and with cgroup v1: process tracking by /proc, no task plugin, no accounting (so
# `sacct` does not work: nothing may depend on it). State, spool, logs and pid files live under DIR.
set -euo pipefail
cmd=${1:?usage: local_slurm.sh start|stop DIR}
dir=$(realpath -m "${2:?usage: local_slurm.sh start|stop DIR}")
host=$(hostname -s)

stop_pid() {  # kill the process in a pid file and wait for it to go
    [ -f "$1" ] || return 0
    local pid; pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    rm -f "$1"
}

if [ "$cmd" = stop ]; then
    stop_pid "$dir/slurmd.pid"
    stop_pid "$dir/slurmctld.pid"
    stop_pid "$dir/munged.pid"
    exit 0
fi
[ "$cmd" = start ] || { echo "error: unknown command $cmd (start or stop)" >&2; exit 2; }
for exe in munged slurmctld slurmd sinfo; do
    command -v "$exe" >/dev/null || { echo "error: $exe not found: apt-get install slurm-wlm munge" >&2; exit 1; }
done
[ -f /etc/munge/munge.key ] || { echo "error: no /etc/munge/munge.key (the munge package creates it)" >&2; exit 1; }
mkdir -p "$dir"/{state,spool,log,munge}
chmod 700 "$dir/munge"
cat > "$dir/slurm.conf" <<EOF
ClusterName=local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
munged --force --socket="$dir/munge/munge.socket" --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" \
    --seed-file="$dir/munge/seed"
export SLURM_CONF=$dir/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do  # until the node is idle
    if sinfo -h -N -o %t 2>/dev/null | grep -q idle; then echo "SLURM_CONF=$SLURM_CONF"; exit 0; fi
    sleep 0.2
done
echo "error: the local Slurm node did not come up; logs in $dir/log" >&2
exit 1
