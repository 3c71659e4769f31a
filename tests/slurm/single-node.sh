#!/bin/bash
# Single-node Slurm (Debian bookworm slurm-wlm 22.05) for testing the slurm/ scripts against a
# real scheduler (tests/test_slurm.py, `make test-slurm`). Run as root, without systemd.
#   tests/slurm/single-node.sh           install (apt) if absent, write config, start munged + slurmctld + slurmd
#   tests/slurm/single-node.sh stop      stop the daemons this script started (by their pid files)
#   tests/slurm/single-node.sh status    show the daemons and sinfo
# It writes /etc/slurm/slurm.conf (and /etc/munge/munge.key when absent): use it on a test
# machine, never on a cluster node.
# Optional: NODES=2 emulates two 1-CPU nodes n1,n2 on this host (two slurmd, ports 17001/17002;
# Lightning then needs MASTER_ADDR=127.0.0.1 exported, as n1 does not resolve).
# Optional: WITH_DBD=1 also installs mariadb + slurmdbd so that `sacct` works
# (without it: squeue / scontrol show job (MinJobAge=1 day) / jobcomp.log).
set -euo pipefail
STATE=/var/spool/slurmcheck      # StateSaveLocation, SlurmdSpoolDir
LOGS=/var/log/slurmcheck
RUN=/run/slurmcheck              # pid files of what this script starts
CPUS=${CPUS:-$(nproc)}
mem_avail=$(awk '/^MemTotal:/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
MEM_MB=${MEM_MB:-$(( mem_avail < 20000 ? mem_avail : 20000 ))}

stop_pid() {  # stop_pid NAME PIDFILE: SIGTERM the pid in PIDFILE, wait for it to go
    local name=$1 file=$2 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file")
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        echo "stopping $name (pid $pid)"
        kill "$pid"
        for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    fi
    rm -f "$file"
}

case "${1:-start}" in
stop)
    for f in "$RUN"/slurmd.pid "$RUN"/slurmd-*.pid; do stop_pid slurmd "$f"; done
    stop_pid slurmctld "$RUN/slurmctld.pid"
    stop_pid slurmdbd "$RUN/slurmdbd.pid"
    stop_pid mariadbd "$RUN/mariadbd.pid"
    stop_pid munged "$RUN/munged.pid"
    exit 0 ;;
status)
    for f in "$RUN"/*.pid; do [ -f "$f" ] && echo "$(basename "$f" .pid): $(cat "$f")"; done
    sinfo; exit 0 ;;
start) ;;
*) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

export DEBIAN_FRONTEND=noninteractive
pkgs="slurm-wlm munge"
[ "${WITH_DBD:-0}" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
# shellcheck disable=SC2086
dpkg -s $pkgs >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q $pkgs; }

mkdir -p "$STATE/ctld" "$STATE/d" "$LOGS" "$RUN" /etc/slurm

# --- munge: key + daemon (as the munge user)
if [ ! -s /etc/munge/munge.key ]; then
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
    else /usr/sbin/create-munge-key -f; fi
fi
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    sleep 1
    cp /run/munge/munged.pid "$RUN/munged.pid"
fi
munge -n | unmunge | grep -q 'STATUS: *Success' && echo "munge: ok"

# --- optional accounting: mariadb + slurmdbd (so that sacct works)
acct="AccountingStorageType=accounting_storage/none"
if [ "${WITH_DBD:-0}" = 1 ]; then
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    if ! mysqladmin ping >/dev/null 2>&1; then
        [ -d /var/lib/mysql/mysql ] || mariadb-install-db --user=mysql >/dev/null
        runuser -u mysql -- /usr/sbin/mariadbd --pid-file=/run/mysqld/mysqld.pid >"$LOGS/mariadb.log" 2>&1 &
        echo $! >"$RUN/mariadbd.pid"
        for _ in $(seq 30); do mysqladmin ping >/dev/null 2>&1 && break; sleep 1; done
    fi
    mysql -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
              CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmcheck';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    cat >/etc/slurm/slurmdbd.conf <<EOF
AuthType=auth/munge
DbdHost=localhost
SlurmUser=root
PidFile=$RUN/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurmcheck
StorageLoc=slurm_acct_db
EOF
    chmod 600 /etc/slurm/slurmdbd.conf
    if ! { [ -f "$RUN/slurmdbd.pid" ] && kill -0 "$(cat "$RUN/slurmdbd.pid")" 2>/dev/null; }; then
        /usr/sbin/slurmdbd
        for _ in $(seq 30); do [ -s "$RUN/slurmdbd.pid" ] && break; sleep 1; done
        sleep 2
    fi
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost"
fi

# --- slurm.conf: one node "localhost", one partition "cpu", no GRES (a CPU-only cluster)
if [ "${NODES:-1}" = 2 ]; then
    dpid="$RUN/slurmd-%n.pid"; dspool="$STATE/d-%n"; dlog="$LOGS/slurmd-%n.log"; mkdir -p "$STATE/d-n1" "$STATE/d-n2"
    nodes="NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17001 CPUs=$((CPUS / 2)) RealMemory=$((MEM_MB / 2)) State=UNKNOWN
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17002 CPUs=$((CPUS / 2)) RealMemory=$((MEM_MB / 2)) State=UNKNOWN"
    names="n1 n2"; partnodes="n1,n2"
else
    dpid="$RUN/slurmd.pid"; dspool="$STATE/d"; dlog="$LOGS/slurmd.log"
    nodes="NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN"
    names="localhost"; partnodes="localhost"
fi
cat >/etc/slurm/slurm.conf <<EOF
ClusterName=ich3dcheck
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
JobRequeue=1
MinJobAge=86400
KillWait=30
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$dpid
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$dspool
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$dlog
SlurmctldDebug=info
SlurmdDebug=info
JobCompType=jobcomp/filetxt
JobCompLoc=$LOGS/jobcomp.log
JobAcctGatherType=jobacct_gather/linux
$acct
$nodes
PartitionName=cpu Nodes=$partnodes Default=YES MaxTime=INFINITE State=UP
EOF

if [ "${WITH_DBD:-0}" = 1 ]; then
    sacctmgr -i add cluster ich3dcheck >/dev/null 2>&1 || true
fi

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
running "$RUN/slurmctld.pid" || /usr/sbin/slurmctld
for n in $names; do
    f="$RUN/slurmd.pid"; [ "$n" = localhost ] || f="$RUN/slurmd-$n.pid"
    running "$f" || /usr/sbin/slurmd -N "$n"
done
for _ in $(seq 30); do
    [ "$(sinfo -h -N -o '%T' 2>/dev/null | grep -c '^idle')" -ge "${NODES:-1}" ] && break; sleep 1
done
for n in $names; do scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true; done
sinfo
srun -N"${NODES:-1}" --ntasks-per-node=1 hostname >/dev/null && echo "slurm: a test step ran on ${NODES:-1} node(s)"
