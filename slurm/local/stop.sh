#!/usr/bin/env bash
# Stop the local Slurm cluster that slurm/local/start.sh started: cancel its jobs, then stop each
# daemon named by a pid file under the prefix (never by process name). The prefix stays for
# inspection unless --purge is given. Idempotent.
set -euo pipefail

PREFIX=${HOLSTEIN_SLURM_PREFIX:-/tmp/holstein-slurm}
PREFIX=${PREFIX%/}
RUN=$PREFIX/run
export SLURM_CONF=$PREFIX/etc/slurm.conf

purge=0
case ${1:-} in
    --purge) purge=1 ;;
    "") ;;
    *) echo "usage: $0 [--purge]" >&2; exit 2 ;;
esac

if [ ! -d "$PREFIX" ]; then
    echo "nothing under $PREFIX; nothing to stop"
    exit 0
fi
[ "$(id -u)" -eq 0 ] || { echo "stop.sh: must run as root (the daemons run as root)" >&2; exit 1; }

# Prints the pid of our daemon NAME if its pid file names a live process called NAME.
running() {
    local pid
    pid=$(cat "$RUN/$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
    echo "$pid"
}

# Without env.sh, clients (and the test fixture) see at once that the cluster is not there.
rm -f "$PREFIX/env.sh"

# Cancel jobs first, so that no job step outlives slurmd.
if running slurmctld >/dev/null; then
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        echo "cancelling jobs: $(echo $jobs)"
        # shellcheck disable=SC2086
        scancel $jobs || true
        for _ in $(seq 100); do
            [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
fi

for d in slurmd slurmctld slurmdbd mariadbd munged; do
    if ! pid=$(running "$d"); then
        rm -f "$RUN/$d.pid"
        continue
    fi
    kill -TERM "$pid"
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "$d (pid $pid) ignored SIGTERM for 30 s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$RUN/$d.pid"
    echo "stopped $d (pid $pid)"
done

if [ "$purge" = 1 ]; then
    if [ -e "$PREFIX/.holstein-slurm" ]; then
        rm -rf -- "$PREFIX"
        echo "removed $PREFIX"
    else
        echo "stop.sh: $PREFIX was not created by start.sh (no .holstein-slurm marker); not removing it" >&2
        exit 1
    fi
else
    echo "local Slurm cluster stopped; logs and state stay in $PREFIX (stop.sh --purge removes them)"
fi
