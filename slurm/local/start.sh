#!/usr/bin/env bash
# Bring up a real single-node Slurm cluster for the integration tests: munged, MariaDB, slurmdbd,
# slurmctld and slurmd, all running as root, with every file they use under one prefix directory.
# Idempotent: with the cluster already up it only says so. Stop it with slurm/local/stop.sh.
# See slurm/local/README.md for the layout and the pitfalls.
#
# Environment (all optional):
#   HOLSTEIN_SLURM_PREFIX     where config, state, logs, pid files and sockets live (/tmp/holstein-slurm)
#   HOLSTEIN_SLURM_PORT_BASE  slurmctld port; slurmd and slurmdbd use the next two (16817)
#   HOLSTEIN_SLURM_DB_PORT    MariaDB port, loopback only (3307)
#   HOLSTEIN_SLURM_CPUS       CPUs the node advertises, more than the machine has on purpose (8)
set -euo pipefail
umask 022

PREFIX=${HOLSTEIN_SLURM_PREFIX:-/tmp/holstein-slurm}
PREFIX=${PREFIX%/}
CTLD_PORT=${HOLSTEIN_SLURM_PORT_BASE:-16817}
SLURMD_PORT=$((CTLD_PORT + 1))
DBD_PORT=$((CTLD_PORT + 2))
DB_PORT=${HOLSTEIN_SLURM_DB_PORT:-3307}
NODE_CPUS=${HOLSTEIN_SLURM_CPUS:-8}
CLUSTER=holstein
NODE=$(hostname -s)

ETC=$PREFIX/etc
RUN=$PREFIX/run
LOG=$PREFIX/log
MUNGE_DIR=$PREFIX/munge
MUNGE_SOCKET=$MUNGE_DIR/munge.socket.2
DB_DIR=$PREFIX/mysql
DB_SOCKET=$DB_DIR/mysqld.sock
# The database only listens on 127.0.0.1 and holds nothing but this test cluster's accounting.
DB_USER=slurm
DB_PASS=holstein-local
export SLURM_CONF=$ETC/slurm.conf

PACKAGES=(slurmctld slurmd slurm-client munge libpmix-dev openmpi-bin libopenmpi-dev slurmdbd mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)   # start order; each writes $RUN/<name>.pid

die() { echo "start.sh: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# Prints the pid of our daemon NAME if its pid file names a live process called NAME.
running() {
    local pid
    pid=$(cat "$RUN/$1.pid" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ] || return 1
    echo "$pid"
}

port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# wait_for SECONDS WHAT LOGFILE CMD...: retry CMD until it succeeds or SECONDS pass.
wait_for() {
    local limit=$1 what=$2 logfile=$3 t0
    shift 3
    t0=$(date +%s)
    until "$@" >/dev/null 2>&1; do
        if [ $(($(date +%s) - t0)) -ge "$limit" ]; then
            "$@" 2>&1 | tail -n 3 >&2 || true
            die "$what not ready after ${limit}s; see $logfile"
        fi
        sleep 0.2
    done
}

[ "$(id -u)" -eq 0 ] || die "must run as root (the daemons run as root); try: sudo bash $0"
case $PREFIX in /?*) ;; *) die "HOLSTEIN_SLURM_PREFIX must be an absolute path, got '$PREFIX'" ;; esac

all_up=1
for d in "${DAEMONS[@]}"; do running "$d" >/dev/null || all_up=0; done
if [ "$all_up" = 1 ] && sinfo -h >/dev/null 2>&1; then
    echo "local Slurm cluster already running under $PREFIX"
    echo "use it with: source $PREFIX/env.sh"
    exit 0
fi

# Refuse before touching anything if a port we need belongs to someone else.
for spec in "mariadbd:$DB_PORT" "slurmdbd:$DBD_PORT" "slurmctld:$CTLD_PORT" "slurmd:$SLURMD_PORT"; do
    d=${spec%%:*} port=${spec#*:}
    running "$d" >/dev/null && continue
    if port_open "$port"; then
        owner=$(ss -Hltnp "sport = :$port" 2>/dev/null | sed -nE 's/.*\(\("([^"]+)",pid=([0-9]+).*/\1, pid \2/p' | head -n 1)
        die "port $port (for $d) is already in use (by ${owner:-another process}); free it or set HOLSTEIN_SLURM_PORT_BASE / HOLSTEIN_SLURM_DB_PORT"
    fi
done

mkdir -p "$ETC" "$RUN" "$LOG" "$MUNGE_DIR" "$DB_DIR" "$PREFIX/state/slurmctld" "$PREFIX/state/slurmd"
chmod 755 "$PREFIX" "$MUNGE_DIR" "$LOG"
touch "$PREFIX/.holstein-slurm"   # marks the directory as ours, so stop.sh --purge may delete it

# --- packages -------------------------------------------------------------------------------------
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    t0=$(now)
    echo "installing ${missing[*]} (log: $LOG/apt.log)"
    # Keep apt from starting the distribution's services: we run our own copies under $PREFIX.
    policy=/usr/sbin/policy-rc.d
    [ -e "$policy" ] && mv "$policy" "$policy.holstein-saved"
    trap 'rm -f "$policy"; [ -e "$policy.holstein-saved" ] && mv "$policy.holstein-saved" "$policy"' EXIT
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    if ! { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends "${missing[@]}"; } >"$LOG/apt.log" 2>&1; then
        tail -n 20 "$LOG/apt.log" >&2
        die "package installation failed; see $LOG/apt.log"
    fi
    rm -f "$policy"
    [ -e "$policy.holstein-saved" ] && mv "$policy.holstein-saved" "$policy"
    trap - EXIT
    echo "packages installed in $(since "$t0") s"
fi

t_up=$(now)

# --- configuration (rewritten on every start; running daemons keep what they read) ---------------
mem_mb=$(awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo)
# With NoInAddrAny/NoCtldInAddrAny every Slurm daemon and client binds to the address the host name
# resolves to instead of 0.0.0.0. That is loopback only when the name resolves to 127.x (as in
# /etc/hosts here); otherwise binding to it would put slurmctld where clients (told 127.0.0.1) cannot
# reach it, so the daemons keep listening on all interfaces and we say so.
node_ip=$(getent ahostsv4 "$NODE" 2>/dev/null | awk 'NR == 1 { print $1 }')
case $node_ip in
    127.*) ctld_params=CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
           dbd_params=CommunicationParameters=NoInAddrAny ;;
    *) ctld_params="# CommunicationParameters: not set, $NODE does not resolve to 127.x" dbd_params=$ctld_params
       echo "start.sh: warning: $NODE resolves to '${node_ip:-nothing}', not 127.x: Slurm daemons will listen" \
            "on all interfaces (add '127.0.0.1 $NODE' to /etc/hosts to restrict them to loopback)" >&2 ;;
esac
cat >"$ETC/slurm.conf" <<EOF
# Generated by slurm/local/start.sh; edits are lost on the next start.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
StateSaveLocation=$PREFIX/state/slurmctld
SlurmdSpoolDir=$PREFIX/state/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
MailProg=/bin/true
# No cgroups on these machines.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=pmix
# Bind to the address the host name resolves to (127.0.0.1, see node_ip above) instead of 0.0.0.0:
# NoCtldInAddrAny for slurmctld, NoInAddrAny for slurmd, slurmstepd and the clients' listening
# sockets (srun's I/O and PMIx ports, salloc).
$ctld_params
# Advertise the CPUs below rather than the real core count, so tests can ask for more tasks.
SlurmdParameters=config_overrides
ReturnToService=2
# Fast turnaround: a short SIGTERM->SIGKILL gap; requeue allowed (scontrol requeue, preemption).
KillWait=5
JobRequeue=1
InactiveLimit=0
# sbatch --wait polls every 2 s only while MinJobAge/2 <= 2; with the default (300) it backs off
# to 8 s and then 32 s. Finished jobs leave squeue within about a minute; sacct keeps them.
MinJobAge=4
# A job in partition "urgent" preempts (requeues) jobs in "debug". A preempted job that asked for
# --signal=[B:]SIG@T gets SIG at once (otherwise its steps get SIGTERM); if it has not ended when
# the partition's GraceTime runs out, it is killed at slurmctld's next time-limit check (every 30 s).
# The main and backfill schedulers look at pending jobs every second.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal
SchedulerParameters=bf_interval=1,sched_interval=1
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCKET
JobAcctGatherType=jobacct_gather/linux
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NODE_CPUS Sockets=1 CoresPerSocket=$NODE_CPUS ThreadsPerCore=1 RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES DefaultTime=01:00:00 MaxTime=7-00:00:00 State=UP PriorityTier=1 GraceTime=10
PartitionName=urgent Nodes=ALL DefaultTime=01:00:00 MaxTime=7-00:00:00 State=UP PriorityTier=2
EOF

cat >"$ETC/slurmdbd.conf" <<EOF
# Generated by slurm/local/start.sh; edits are lost on the next start.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
# Not in slurmdbd.conf(5) of 22.05, which lists only DisableIPv4/EnableIPv6 here, but slurmdbd checks
# the same string as the other daemons: with it, it binds to the host name's address (127.0.0.1).
$dbd_params
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF
chmod 600 "$ETC/slurmdbd.conf"   # slurmdbd refuses a config others can read

cat >"$PREFIX/env.sh" <<EOF
# Generated by slurm/local/start.sh: source this to use the local Slurm cluster.
export HOLSTEIN_SLURM_PREFIX=$PREFIX
export SLURM_CONF=$ETC/slurm.conf
EOF

# --- daemons --------------------------------------------------------------------------------------
if ! running munged >/dev/null; then
    if [ ! -s "$MUNGE_DIR/munge.key" ]; then
        dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
    fi
    chmod 600 "$MUNGE_DIR/munge.key"
    munged --key-file="$MUNGE_DIR/munge.key" --socket="$MUNGE_SOCKET" --pid-file="$RUN/munged.pid" \
        --log-file="$LOG/munged.log" --seed-file="$MUNGE_DIR/munged.seed" \
        </dev/null >>"$LOG/munged.out" 2>&1 || die "munged failed to start; see $LOG/munged.log"
fi
wait_for 10 munged "$LOG/munged.log" bash -c "munge -S '$MUNGE_SOCKET' -n | unmunge -S '$MUNGE_SOCKET'"

if ! running mariadbd >/dev/null; then
    if [ ! -d "$DB_DIR/data/mysql" ]; then
        mariadb-install-db --no-defaults --datadir="$DB_DIR/data" --user=root --skip-test-db \
            >"$LOG/mariadb-install.log" 2>&1 || die "MariaDB initialisation failed; see $LOG/mariadb-install.log"
    fi
    # InnoDB settings are the ones slurmdbd asks for; the rest keeps MariaDB off default paths/ports.
    setsid -f mariadbd --no-defaults --user=root --datadir="$DB_DIR/data" --socket="$DB_SOCKET" \
        --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve --pid-file="$RUN/mariadbd.pid" \
        --log-error="$LOG/mariadb.log" --innodb-buffer-pool-size=512M --innodb-lock-wait-timeout=900 \
        --innodb-log-file-size=64M \
        </dev/null >>"$LOG/mariadb.out" 2>&1
fi
wait_for 60 MariaDB "$LOG/mariadb.log" mariadb-admin --no-defaults --socket="$DB_SOCKET" -u root ping
mariadb --no-defaults --socket="$DB_SOCKET" -u root -e "
    CREATE USER IF NOT EXISTS '$DB_USER'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
    GRANT ALL ON slurm_acct_db.* TO '$DB_USER'@'127.0.0.1';" \
    || die "could not create the slurmdbd database user; see $LOG/mariadb.log"

if ! running slurmdbd >/dev/null; then
    slurmdbd </dev/null >>"$LOG/slurmdbd.out" 2>&1 || die "slurmdbd failed to start; see $LOG/slurmdbd.log"
fi
wait_for 60 slurmdbd "$LOG/slurmdbd.log" sacctmgr -n -P list cluster format=cluster
# Adding the cluster also creates account "root" with user root, which is all the tests need.
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
    sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "could not register cluster $CLUSTER; see $LOG/slurmdbd.log"
fi

if ! running slurmctld >/dev/null; then
    slurmctld </dev/null >>"$LOG/slurmctld.out" 2>&1 || die "slurmctld failed to start; see $LOG/slurmctld.log"
fi
wait_for 30 slurmctld "$LOG/slurmctld.log" scontrol ping

if ! running slurmd >/dev/null; then
    slurmd -N "$NODE" </dev/null >>"$LOG/slurmd.out" 2>&1 || die "slurmd failed to start; see $LOG/slurmd.log"
fi

node_ready() {
    case $(sinfo -h -n "$NODE" -o %T 2>/dev/null) in
        idle | mixed | allocated | completing) return 0 ;;
        *drain* | down*) scontrol update NodeName="$NODE" State=RESUME >/dev/null 2>&1; return 1 ;;
        *) return 1 ;;
    esac
}
wait_for 30 "node $NODE" "$LOG/slurmd.log and $LOG/slurmctld.log" node_ready

# Anything of ours listening beyond loopback is worth a warning (see slurm/local/README.md).
for d in "${DAEMONS[@]}"; do
    pid=$(running "$d") || continue
    ss -Hltnp 2>/dev/null | grep "pid=$pid," | awk '{ print $4 }' | grep -v -e '^127\.' -e '^\[::1\]' |
        while read -r addr; do echo "start.sh: warning: $d listens on $addr, not only on loopback" >&2; done || true
done

echo "local Slurm cluster up in $(since "$t_up") s (cluster $CLUSTER, node $NODE, $NODE_CPUS CPUs, prefix $PREFIX)"
echo "use it with: source $PREFIX/env.sh"
