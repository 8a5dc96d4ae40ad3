#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by tests/slurm/start-cluster.sh (slurmd, slurmctld, munged).
# Cancels jobs still queued or running first. Leaves /etc/slurm/slurm.conf and the state dir for inspection.
set -uo pipefail

STATE_DIR="${ATTNBENCH_SLURM_DIR:-/tmp/attnbench-slurm}"

command -v scancel >/dev/null && scancel --full --quiet --state=PENDING,RUNNING 2>/dev/null || true
# Only the pids this script's partner recorded: never kill by name.
for name in slurmd slurmctld munged; do
    pidfile="$STATE_DIR/$name.pid"
    [[ -f $pidfile ]] || continue
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
        echo "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
done
