#!/usr/bin/env bash
# Start a one-node SLURM cluster on this machine for testing the SLURM profile (profiles/slurm).
#
# Idempotent: installs Debian's slurm-wlm + munge when missing, writes /etc/slurm/slurm.conf (only if absent or
# written by this script), starts munged, slurmctld and slurmd, and waits until `sinfo` shows the node idle.
# Needs root (the daemons run as root; SlurmUser=root). Stop everything with tests/slurm/stop-cluster.sh.
#
# No accounting database: the SLURM executor plugin queries job states with `squeue` when MinJobAge is long
# enough (it is set to 3600 s here), so slurmdbd/MariaDB are not needed. Pass `--slurm-status-command squeue`
# (tests/slurm/env.sh does) because `sacct` is installed but has no database to answer from.
#
# The node also has one stand-in GPU of model `h100` (gres.conf File=/dev/null) in a second partition `gpu-h100`,
# so a job's GPU request (--gpus=h100:1 -p gpu-h100) goes through real SLURM scheduling; nothing can compute on it.
#
# Environment: ATTNBENCH_SLURM_DIR (state, spool and daemon logs; default /tmp/attnbench-slurm),
#              ATTNBENCH_SLURM_MEM_MB (node RealMemory; default: 80% of MemTotal).
set -euo pipefail

STATE_DIR="${ATTNBENCH_SLURM_DIR:-/tmp/attnbench-slurm}"
CONF=/etc/slurm/slurm.conf
GRES_CONF=/etc/slurm/gres.conf
MARKER="# written by attnbench tests/slurm/start-cluster.sh"

if [[ $(id -u) -ne 0 ]]; then
    echo "start-cluster.sh: must run as root (slurmctld/slurmd/munged run as root here)" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    echo "installing slurm-wlm and munge (apt-get)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge >/dev/null
fi

node=$(hostname -s)
cpus=$(nproc)
mem_mb="${ATTNBENCH_SLURM_MEM_MB:-$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)}"

if [[ -f $CONF ]] && ! grep -qF "$MARKER" "$CONF"; then
    echo "start-cluster.sh: $CONF exists and was not written by this script; refusing to overwrite it" >&2
    exit 1
fi

mkdir -p "$STATE_DIR"/{ctld,spool,log} /run/munge /etc/slurm
old_conf=$(cat "$CONF" "$GRES_CONF" 2>/dev/null || true)
cat > "$CONF" <<CONF
$MARKER
ClusterName=attnbench-test
SlurmctldHost=$node
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
ReturnToService=2
# The executor plugin polls job states with squeue when finished jobs stay visible this long.
MinJobAge=3600
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$STATE_DIR/ctld
SlurmdSpoolDir=$STATE_DIR/spool
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmctldLogFile=$STATE_DIR/log/slurmctld.log
SlurmdLogFile=$STATE_DIR/log/slurmd.log
GresTypes=gpu
NodeName=$node CPUs=$cpus RealMemory=$mem_mb Gres=gpu:h100:1 State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu-h100 Nodes=$node MaxTime=INFINITE State=UP
CONF
cat > "$GRES_CONF" <<GRES
$MARKER
NodeName=$node Name=gpu Type=h100 File=/dev/null
GRES
# Daemons still running on an older configuration (e.g. from an earlier version of this script) are restarted.
if [[ $old_conf != "$(cat "$CONF" "$GRES_CONF")" ]]; then
    "$(dirname "$0")/stop-cluster.sh"
fi

# Start a daemon in its own session unless its pid file names a live process (idempotent re-runs).
start_daemon() {
    local name=$1 pidfile=$2; shift 2
    if [[ -f $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        echo "$name already running (pid $(cat "$pidfile"))"
        return
    fi
    setsid "$@" >"$STATE_DIR/log/$name.out" 2>&1 < /dev/null &
    echo $! >"$pidfile"
    echo "started $name (pid $!)"
}

if ! munge -n >/dev/null 2>&1; then
    [[ -s /etc/munge/munge.key ]] || mungekey --create --keyfile=/etc/munge/munge.key
    munged --force --pid-file="$STATE_DIR/munged.pid"
    echo "started munged"
fi
start_daemon slurmctld "$STATE_DIR/slurmctld.pid" slurmctld -D -f "$CONF"
start_daemon slurmd "$STATE_DIR/slurmd.pid" slurmd -D -f "$CONF"

# Wait until the node is schedulable; a node left DOWN/DRAIN by an earlier run is resumed.
for _ in $(seq 60); do
    state=$(sinfo -h -n "$node" -o %t 2>/dev/null || true)
    case $state in
        idle|mix|alloc) sinfo; exit 0 ;;
        down*|drain*) scontrol update NodeName="$node" State=RESUME 2>/dev/null || true ;;
    esac
    sleep 1
done
echo "start-cluster.sh: node $node not idle after 60 s (state: '${state:-none}'); logs in $STATE_DIR/log" >&2
exit 1
