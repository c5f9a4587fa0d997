#!/usr/bin/env bash
# A local single-node SLURM (slurmctld + slurmd + munged on this host) for tests and
# development. See slurm/local/README.md.
#
#   slurm/local/cluster.sh install   # apt-get install slurm-wlm munge, only when missing
#   slurm/local/cluster.sh start     # configure and start (no-op when already up)
#   slurm/local/cluster.sh stop      # cancel jobs, stop the daemons it started (idempotent)
#   slurm/local/cluster.sh status    # up or down, sinfo, squeue
#   slurm/local/cluster.sh env       # export lines: eval "$(slurm/local/cluster.sh env)"
#
# Settings (environment):
#   CEJOBS_SLURM_DIR         state dir (default /tmp/cejobs-slurm); no whitespace
#   CEJOBS_SLURM_GPUS        fake GPUs on the node (default 2)
#   CEJOBS_SLURM_CPUS        CPUs of the node (default: nproc)
#   CEJOBS_SLURM_MEM_MB      RealMemory in MB (default: MemTotal minus headroom)
#   CEJOBS_SLURM_CTLD_PORT   slurmctld port (default 6817)
#   CEJOBS_SLURM_SLURMD_PORT slurmd port (default 6818)
#   CEJOBS_SLURM_START_TIMEOUT seconds to wait for the node to be idle (default 60)
#   CEJOBS_SLURM_CRED_EXPIRE credential lifetime = requeue delay, seconds (default 10)
set -euo pipefail

STATE_DIR="${CEJOBS_SLURM_DIR:-/tmp/cejobs-slurm}"
N_GPUS="${CEJOBS_SLURM_GPUS:-2}"
CTLD_PORT="${CEJOBS_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${CEJOBS_SLURM_SLURMD_PORT:-6818}"
START_TIMEOUT="${CEJOBS_SLURM_START_TIMEOUT:-60}"
CRED_EXPIRE="${CEJOBS_SLURM_CRED_EXPIRE:-10}"

CONF_DIR="${STATE_DIR}/etc"
SLURM_CONF_PATH="${CONF_DIR}/slurm.conf"
MUNGE_DIR="${STATE_DIR}/munge"
MUNGE_KEY="${MUNGE_DIR}/munge.key"
MUNGE_SOCKET="${MUNGE_DIR}/munge.socket.2"
MUNGE_PID="${MUNGE_DIR}/munged.pid"
LOG_DIR="${STATE_DIR}/log"
RUN_DIR="${STATE_DIR}/run"
CTLD_PID="${RUN_DIR}/slurmctld.pid"
SLURMD_PID="${RUN_DIR}/slurmd.pid"
GPU_DIR="${STATE_DIR}/gpu"

die() { echo "cluster.sh: error: $*" >&2; exit 1; }
log() { echo "cluster.sh: $*" >&2; }

node_name() {
    local h
    h="$(hostname -s 2>/dev/null || true)"
    [[ -n "${h}" ]] || h="$(uname -n)"
    h="${h%%.*}"
    [[ -n "${h}" ]] || h="localhost"
    printf '%s\n' "${h}"
}

# Whether a process exists and is not a zombie (PID 1 of a container may reap late).
alive() {
    local pid="$1" stat
    kill -0 "${pid}" 2>/dev/null || return 1
    stat="$(cat "/proc/${pid}/stat" 2>/dev/null || true)"
    [[ -n "${stat}" ]] || return 1
    stat="${stat##*) }"
    [[ "${stat:0:1}" != [ZX] ]]
}

# pid from a pid file when that process is alive and is the expected program, else nothing.
live_pid() {
    local pidfile="$1" comm="$2" pid
    [[ -s "${pidfile}" ]] || return 1
    pid="$(tr -dc '0-9' < "${pidfile}")"
    [[ -n "${pid}" ]] || return 1
    alive "${pid}" || return 1
    [[ "$(cat "/proc/${pid}/comm" 2>/dev/null || true)" == "${comm}"* ]] || return 1
    printf '%s\n' "${pid}"
}

have_binaries() {
    command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
        && command -v sbatch >/dev/null 2>&1 && command -v munged >/dev/null 2>&1
}

cmd_install() {
    if have_binaries; then
        log "slurm-wlm and munge already installed ($(slurmd -V 2>/dev/null || echo '?'))"
        return 0
    fi
    [[ "$(id -u)" == 0 ]] || die "slurm-wlm/munge are missing and installing them needs root (apt-get)"
    command -v apt-get >/dev/null 2>&1 || die "slurm-wlm/munge are missing and apt-get is not available"
    log "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    # Update the package lists only when the first try fails (e.g. empty lists in a fresh image).
    if ! apt-get install -y -q --no-install-recommends slurm-wlm munge >&2; then
        apt-get update -q >&2
        apt-get install -y -q --no-install-recommends slurm-wlm munge >&2
    fi
    have_binaries || die "apt-get finished but slurmctld/slurmd/sbatch/munged are still missing"
}

write_configs() {
    local node cpus mem_total_kb mem_mb headroom def_mem node_gres i
    node="$(node_name)"
    cpus="${CEJOBS_SLURM_CPUS:-$(nproc)}"
    if [[ -n "${CEJOBS_SLURM_MEM_MB:-}" ]]; then
        mem_mb="${CEJOBS_SLURM_MEM_MB}"
    else
        mem_total_kb="$(awk '/^MemTotal:/ {print $2}' /proc/meminfo)"
        mem_mb=$(( mem_total_kb / 1024 ))
        headroom=$(( mem_mb / 10 ))
        (( headroom >= 512 )) || headroom=512
        mem_mb=$(( mem_mb - headroom ))
        (( mem_mb >= 256 )) || mem_mb=256
    fi
    def_mem=$(( mem_mb / cpus ))
    node_gres=""
    (( N_GPUS == 0 )) || node_gres=" Gres=gpu:${N_GPUS}"

    mkdir -p "${GPU_DIR}"
    for (( i = 0; i < N_GPUS; i++ )); do
        # slurmd drops gres files that are not character/block devices ("... is not a valid
        # character or block device") and then sets no CUDA_VISIBLE_DEVICES; a symlink to
        # /dev/null is a character device to stat(), and the trailing digit is the GPU index.
        ln -sfn /dev/null "${GPU_DIR}/gpu${i}"
    done

    cat > "${SLURM_CONF_PATH}" <<EOF
# Written by slurm/local/cluster.sh: a single-node test cluster. Regenerated on every start.
ClusterName=cejobs-local
SlurmctldHost=${node}(127.0.0.1)
SlurmctldPort=${CTLD_PORT}
SlurmdPort=${SLURMD_PORT}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120s).
AuthInfo=socket=${MUNGE_SOCKET},cred_expire=${CRED_EXPIRE}
StateSaveLocation=${STATE_DIR}/state
SlurmdSpoolDir=${STATE_DIR}/spool
MailProg=/bin/true
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${LOG_DIR}/slurmctld.log
SlurmdLogFile=${LOG_DIR}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=${CONF_DIR}/plugstack.conf
# No cgroups in containers: track processes through /proc, no task binding.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=${def_mem}
# Let the configured CPUs/memory win over what slurmd detects (containers, gVisor).
SlurmdParameters=config_overrides
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
# Fast for tests.
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1,default_queue_depth=1000
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
InactiveLimit=0
KillWait=2
MinJobAge=600
Waittime=0
NodeName=${node} NodeAddr=127.0.0.1 NodeHostname=${node} CPUs=${cpus} RealMemory=${mem_mb}${node_gres} State=UNKNOWN
PartitionName=debug Nodes=${node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

    {
        echo "# Written by slurm/local/cluster.sh: fake GPUs backed by plain files."
        echo "AutoDetect=off"
        if (( N_GPUS > 0 )); then
            echo "NodeName=${node} Name=gpu File=${GPU_DIR}/gpu[0-$(( N_GPUS - 1 ))]"
        fi
    } > "${CONF_DIR}/gres.conf"

    # Not used by linuxproc/task none, but keeps slurmd from looking at /etc/slurm/cgroup.conf.
    cat > "${CONF_DIR}/cgroup.conf" <<EOF
# Written by slurm/local/cluster.sh: no cgroup plugins are configured.
ConstrainCores=no
ConstrainDevices=no
ConstrainRAMSpace=no
EOF
    : > "${CONF_DIR}/plugstack.conf"
}

start_munged() {
    if live_pid "${MUNGE_PID}" munged >/dev/null; then
        return 0
    fi
    if [[ ! -s "${MUNGE_KEY}" ]]; then
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile="${MUNGE_KEY}" >&2
        else
            dd if=/dev/urandom of="${MUNGE_KEY}" bs=1 count=1024 status=none
        fi
    fi
    chmod 0600 "${MUNGE_KEY}"
    rm -f "${MUNGE_SOCKET}" "${MUNGE_SOCKET}.lock"
    # --force: munged refuses some setups (running as root, /tmp parents) without it.
    munged --force \
        --key-file="${MUNGE_KEY}" \
        --socket="${MUNGE_SOCKET}" \
        --pid-file="${MUNGE_PID}" \
        --log-file="${LOG_DIR}/munged.log" \
        --seed-file="${MUNGE_DIR}/munged.seed" \
        >>"${LOG_DIR}/munged.log" 2>&1 9>&- \
        || { tail -n 20 "${LOG_DIR}/munged.log" >&2 || true; die "munged failed to start"; }
    local i
    for (( i = 0; i < 50; i++ )); do
        [[ -S "${MUNGE_SOCKET}" ]] && return 0
        sleep 0.1
    done
    tail -n 20 "${LOG_DIR}/munged.log" >&2 || true
    die "munged started but its socket ${MUNGE_SOCKET} did not appear"
}

client_env() { SLURM_CONF="${SLURM_CONF_PATH}" "$@"; }

node_state() {
    client_env sinfo -h -N -n "$(node_name)" -o '%T' 2>/dev/null | head -n 1 || true
}

tail_logs() {
    local f
    for f in munged.log slurmctld.log slurmd.log; do
        if [[ -f "${LOG_DIR}/${f}" ]]; then
            echo "----- ${LOG_DIR}/${f} (last 20 lines) -----" >&2
            tail -n 20 "${LOG_DIR}/${f}" >&2 || true
        fi
    done
}

# Epoch seconds of the node's last slurmd registration (SlurmdStartTime), or 0.
slurmd_start_epoch() {
    local t
    t="$(client_env scontrol show node "$(node_name)" 2>/dev/null \
        | sed -n 's/.*SlurmdStartTime=\([0-9T:-]*\).*/\1/p' | head -n 1)"
    [[ -n "${t}" ]] && date -d "${t}" +%s 2>/dev/null || echo 0
}

# Wait until the node is usable; with an argument (epoch seconds), also until slurmd has
# registered since then (a restarted slurmctld reports the recovered state before that).
wait_idle() {
    local since="${1:-0}" deadline state
    deadline=$(( SECONDS + START_TIMEOUT ))
    while (( SECONDS < deadline )); do
        state="$(node_state)"
        case "${state}" in
            idle|mixed|allocated|completing)
                (( since == 0 )) || (( $(slurmd_start_epoch) >= since )) && return 0 ;;
            drained*|draining*|down*)
                client_env scontrol update NodeName="$(node_name)" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 0.5
    done
    echo "cluster.sh: error: node $(node_name) not idle after ${START_TIMEOUT}s (state: '${state:-none}')" >&2
    client_env sinfo -N -l >&2 2>&1 || true
    client_env scontrol show node "$(node_name)" >&2 2>&1 || true
    tail_logs
    exit 1
}

is_up() {
    live_pid "${MUNGE_PID}" munged >/dev/null \
        && live_pid "${CTLD_PID}" slurmctld >/dev/null \
        && live_pid "${SLURMD_PID}" slurmd >/dev/null
}

cmd_start() {
    [[ "${N_GPUS}" =~ ^[0-9]+$ ]] || die "CEJOBS_SLURM_GPUS must be a number: '${N_GPUS}'"
    have_binaries || die "slurm-wlm/munge are not installed; run: $0 install"
    [[ "$(id -u)" == 0 ]] || die "starting the local cluster needs root (it runs slurmd/slurmctld as root)"

    if is_up; then
        log "already running (state dir ${STATE_DIR})"
        wait_idle
        return 0
    fi

    mkdir -p "${CONF_DIR}" "${MUNGE_DIR}" "${LOG_DIR}" "${RUN_DIR}" "${STATE_DIR}/state" "${STATE_DIR}/spool"
    chmod 0755 "${MUNGE_DIR}"   # clients of any user need the socket; the key stays 0600
    chmod 0755 "${STATE_DIR}"
    start_munged
    # Partially up (e.g. one daemon died): restart the slurm daemons on a fresh config.
    stop_slurm_daemons
    write_configs

    local since
    since=$(( $(date +%s) - 1 ))
    slurmctld -f "${SLURM_CONF_PATH}" >>"${LOG_DIR}/slurmctld.out" 2>&1 9>&- \
        || { tail_logs; die "slurmctld failed to start"; }
    slurmd -f "${SLURM_CONF_PATH}" -N "$(node_name)" >>"${LOG_DIR}/slurmd.out" 2>&1 9>&- \
        || { tail_logs; die "slurmd failed to start"; }
    wait_idle "${since}"
    log "up: $(node_name), ${N_GPUS} fake GPU(s), state dir ${STATE_DIR}"
    log "clients: eval \"\$($0 env)\""
}

# Send TERM to a daemon from its pid file, wait, then KILL.
stop_pid() {
    local pidfile="$1" comm="$2" pid i
    pid="$(live_pid "${pidfile}" "${comm}")" || { rm -f "${pidfile}"; return 0; }
    kill -TERM "${pid}" 2>/dev/null || true
    for (( i = 0; i < 100; i++ )); do
        alive "${pid}" || break
        sleep 0.1
    done
    if alive "${pid}"; then
        log "${comm} (pid ${pid}) ignored SIGTERM, killing it"
        kill -KILL "${pid}" 2>/dev/null || true
    fi
    rm -f "${pidfile}"
}

stop_slurm_daemons() {
    stop_pid "${SLURMD_PID}" slurmd
    stop_pid "${CTLD_PID}" slurmctld
}

cmd_stop() {
    local ids i
    if live_pid "${CTLD_PID}" slurmctld >/dev/null && [[ -f "${SLURM_CONF_PATH}" ]]; then
        # Cancel every job so that no slurmstepd / job process outlives the daemons.
        ids="$(client_env squeue -h -o '%A' 2>/dev/null || true)"
        if [[ -n "${ids}" ]]; then
            # shellcheck disable=SC2086 # job ids are plain numbers
            client_env scancel ${ids} 2>/dev/null || true
            for (( i = 0; i < 40; i++ )); do
                [[ -z "$(client_env squeue -h -t running,completing,configuring -o '%A' 2>/dev/null || true)" ]] && break
                sleep 0.5
            done
        fi
    fi
    stop_slurm_daemons
    stop_pid "${MUNGE_PID}" munged
    rm -f "${MUNGE_SOCKET}" "${MUNGE_SOCKET}.lock"
    log "stopped (state kept in ${STATE_DIR})"
}

cmd_status() {
    local name
    for name in munged slurmctld slurmd; do
        local pidfile
        case "${name}" in
            munged) pidfile="${MUNGE_PID}" ;;
            slurmctld) pidfile="${CTLD_PID}" ;;
            slurmd) pidfile="${SLURMD_PID}" ;;
        esac
        if pid="$(live_pid "${pidfile}" "${name}")"; then
            echo "${name}: running (pid ${pid})"
        else
            echo "${name}: not running"
        fi
    done
    if is_up; then
        echo "cluster: up (SLURM_CONF=${SLURM_CONF_PATH})"
        client_env sinfo || true
        client_env squeue || true
        return 0
    fi
    echo "cluster: down"
    return 3
}

cmd_env() {
    printf 'export SLURM_CONF=%q\n' "${SLURM_CONF_PATH}"
}

# Serialise start/stop (e.g. two pytest processes starting the cluster at once).
take_lock() {
    [[ "${STATE_DIR}" != *[[:space:]]* ]] || die "CEJOBS_SLURM_DIR must not contain whitespace (slurm.conf cannot quote it): '${STATE_DIR}'"
    [[ "${STATE_DIR}" == /?* ]] || die "CEJOBS_SLURM_DIR must be an absolute path: '${STATE_DIR}'"
    mkdir -p "$(dirname "${STATE_DIR}")"
    # fd 9 holds the lock; the daemons are started with 9>&- so they do not inherit it.
    exec 9>>"${STATE_DIR}.lock"
    if command -v flock >/dev/null 2>&1; then
        flock -w 120 9 || die "timed out waiting for ${STATE_DIR}.lock"
    fi
}

case "${1:-}" in
    install) cmd_install ;;
    start) take_lock; cmd_start ;;
    stop) take_lock; cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) echo "usage: $0 {install|start|stop|status|env}" >&2; exit 2 ;;
esac
