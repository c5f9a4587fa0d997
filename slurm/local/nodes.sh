#!/usr/bin/env bash
# A multi-node SLURM on the hosts of scripts/hosts.sh: slurmctld (and munged) on h0, one
# slurmd on each of h1..h(N-1) as nodes n1..n(N-1), each with its NodeAddr and one fake GPU.
# It is separate from cluster.sh (the single-node SLURM on 127.0.0.1): its own state dir,
# config and munge key, and every daemon lives inside the hosts' namespaces.
#
#   scripts/hosts.sh up 3                 # the hosts first
#   slurm/local/nodes.sh start            # configure, start, wait until every node is idle
#   slurm/local/nodes.sh env              # export SLURM_CONF=...
#   scripts/hosts.sh exec h0 env SLURM_CONF=... sbatch ...   # clients run on a host (h0)
#   slurm/local/nodes.sh stop             # cancel jobs, stop the daemons (idempotent)
#
# Settings: CEJOBS_HOSTS_NAME / _SUBNET / _DIR as for hosts.sh (the state dir is
# <dir>/<name>/slurm); CEJOBS_NODES_CPUS (CPUs per node, default 1);
# CEJOBS_NODES_SLURMD_TIMEOUT (s before a silent node is DOWN, default 10).
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
HOSTS="${HERE}/../../scripts/hosts.sh"
NAME="${CEJOBS_HOSTS_NAME:-cej}"
STATE="${CEJOBS_HOSTS_DIR:-/tmp/cejobs-hosts}/${NAME}/slurm"
CPUS="${CEJOBS_NODES_CPUS:-1}"
SLURMD_TIMEOUT="${CEJOBS_NODES_SLURMD_TIMEOUT:-10}"
CONF="${STATE}/etc/slurm.conf"
SOCKET="${STATE}/munge/munge.socket.2"

die() { echo "nodes.sh: error: $*" >&2; exit 1; }
log() { echo "nodes.sh: $*" >&2; }
on() { "${HOSTS}" exec "$@"; }
client() { on h0 env SLURM_CONF="${CONF}" "$@"; }
node_hosts() { "${HOSTS}" status 2>/dev/null | awk '$1 != "h0" {print $1}'; }

write_conf() {
    local h i nodes=() ctl
    ctl="$("${HOSTS}" addr h0)"
    mkdir -p "${STATE}"/{etc,munge,log,run,state,spool,gpu}
    {
        cat <<EOF
# Written by slurm/local/nodes.sh: nodes n1.. on the hosts of scripts/hosts.sh.
ClusterName=cejobs-nodes
SlurmctldHost=$(hostname -s)(${ctl})
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=${SOCKET},cred_expire=10
StateSaveLocation=${STATE}/state
SlurmdSpoolDir=${STATE}/spool/%n
SlurmctldPidFile=${STATE}/run/slurmctld.pid
SlurmdPidFile=${STATE}/run/slurmd-%n.pid
SlurmctldLogFile=${STATE}/log/slurmctld.log
SlurmdLogFile=${STATE}/log/slurmd-%n.log
PlugStackConfig=${STATE}/etc/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
SlurmdParameters=config_overrides
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SlurmctldTimeout=30
SlurmdTimeout=${SLURMD_TIMEOUT}
MessageTimeout=5
InactiveLimit=0
KillWait=2
MinJobAge=600
Waittime=0
EOF
        for h in $(node_hosts); do
            i="${h#h}"
            nodes+=("n${i}")
            echo "NodeName=n${i} NodeAddr=$("${HOSTS}" addr "${h}") CPUs=${CPUS} RealMemory=$(( 2000 * CPUS )) Gres=gpu:1 State=UNKNOWN"
        done
        (( ${#nodes[@]} )) || die "no hosts besides h0; run: scripts/hosts.sh up 3"
        echo "PartitionName=debug Nodes=$(IFS=,; echo "${nodes[*]}") Default=YES MaxTime=INFINITE State=UP"
    } > "${CONF}"
    {
        echo "AutoDetect=off"
        for n in "${nodes[@]}"; do
            ln -sfn /dev/null "${STATE}/gpu/${n}-gpu0"   # a character device to slurmd (cluster.sh)
            echo "NodeName=${n} Name=gpu File=${STATE}/gpu/${n}-gpu0"
        done
    } > "${STATE}/etc/gres.conf"
    printf 'ConstrainCores=no\nConstrainDevices=no\nConstrainRAMSpace=no\n' > "${STATE}/etc/cgroup.conf"
    : > "${STATE}/etc/plugstack.conf"
}

running() {  # pid file $1 names a live process
    [[ -s "$1" ]] && kill -0 "$(tr -dc 0-9 < "$1")" 2>/dev/null
}

up() {  # munged, slurmctld and a slurmd for every node host are alive
    local h
    running "${STATE}/munge/munged.pid" && running "${STATE}/run/slurmctld.pid" || return 1
    for h in $(node_hosts); do running "${STATE}/run/slurmd-n${h#h}.pid" || return 1; done
}

cmd_start() {
    local h deadline states
    command -v slurmctld >/dev/null || die "slurm-wlm is not installed: slurm/local/cluster.sh install"
    "${HOSTS}" status >/dev/null 2>&1 || die "no hosts ${NAME}; run: scripts/hosts.sh up 3"
    if up; then log "already running"; return 0; fi
    cmd_stop 2>/dev/null   # partly up: start afresh
    write_conf
    mkdir -p "${STATE}/spool"/n{1..64}
    chmod 0755 "${STATE}" "${STATE}/munge"
    [[ -s "${STATE}/munge/munge.key" ]] || dd if=/dev/urandom of="${STATE}/munge/munge.key" bs=1 count=1024 status=none
    chmod 0600 "${STATE}/munge/munge.key"
    if ! running "${STATE}/munge/munged.pid"; then
        on h0 munged --force --key-file="${STATE}/munge/munge.key" --socket="${SOCKET}" \
            --pid-file="${STATE}/munge/munged.pid" --log-file="${STATE}/log/munged.log" \
            --seed-file="${STATE}/munge/munged.seed"
    fi
    on h0 slurmctld -f "${CONF}" >>"${STATE}/log/slurmctld.out" 2>&1
    for h in $(node_hosts); do
        on "${h}" slurmd -f "${CONF}" -N "n${h#h}" >>"${STATE}/log/slurmd.out" 2>&1
    done
    deadline=$(( SECONDS + ${CEJOBS_NODES_START_TIMEOUT:-90} ))
    while (( SECONDS < deadline )); do
        states="$(client sinfo -h -N -o '%T' 2>/dev/null | sort -u | tr '\n' ' ')"
        [[ "${states}" == "idle " ]] && { log "up: $(client sinfo -h -N -o '%N@%T' | tr '\n' ' ')"; return 0; }
        sleep 0.5
    done
    tail -n 20 "${STATE}/log/slurmctld.log" >&2 || true
    die "nodes not idle after ${CEJOBS_NODES_START_TIMEOUT:-90} s (states: ${states:-none})"
}

stop_pidfile() {
    local f="$1" pid
    running "${f}" || { rm -f "${f}"; return 0; }
    pid="$(tr -dc 0-9 < "${f}")"
    kill -CONT "${pid}" 2>/dev/null || true
    kill -KILL "${pid}" 2>/dev/null || true
    rm -f "${f}"
}

cmd_stop() {
    local f
    if running "${STATE}/run/slurmctld.pid" && "${HOSTS}" status >/dev/null 2>&1; then
        client scancel --full --quiet --state=RUNNING --state=PENDING --user=root 2>/dev/null || true
    fi
    for f in "${STATE}"/run/slurmd-*.pid "${STATE}/run/slurmctld.pid" "${STATE}/munge/munged.pid"; do
        [[ -e "${f}" ]] && stop_pidfile "${f}"
    done
    log "stopped (the hosts' processes die with scripts/hosts.sh down)"
}

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    env) printf 'export SLURM_CONF=%q\n' "${CONF}" ;;
    status) client sinfo -N; client squeue ;;
    *) echo "usage: $0 {start|stop|env|status}" >&2; exit 2 ;;
esac
