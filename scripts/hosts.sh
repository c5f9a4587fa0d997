#!/usr/bin/env bash
# Hosts for multi-host tests and trials: N network namespaces on this machine, joined by a
# bridge that lives in a namespace of its own (docs/operations.md, "Multiple nodes").
#
#   scripts/hosts.sh up [N]          # hosts h0..h(N-1) (default 3), idempotent
#   scripts/hosts.sh down            # kill every process in them, delete them (idempotent)
#   scripts/hosts.sh prune           # `down` for every leftover set whose owner pid is gone
#   scripts/hosts.sh status          # hosts, addresses, links, process counts
#   scripts/hosts.sh exec hI CMD...  # run CMD on host I (its own TMPDIR; the same files)
#   scripts/hosts.sh addr hI         # host I's address
#   scripts/hosts.sh kill hI         # SIGKILL every process of host I (a node dies)
#   scripts/hosts.sh cut hI / heal hI   # take host I's link down / bring it back up
#
# Settings (environment):
#   CEJOBS_HOSTS_NAME    name of the set, a prefix of every namespace (default cej); at most
#                        11 characters, letters and digits. A name that ends in digits (cjt123)
#                        records that pid as its owner: `prune` removes it once that pid is gone.
#   CEJOBS_HOSTS_SUBNET  the first three octets of the hosts' /24 (default 10.213.7): host I
#                        is .(10+I). It exists only inside these namespaces, never in the root
#                        one, so two sets may use the same subnet.
#   CEJOBS_HOSTS_DIR     per-host temp dirs, <dir>/<name>/hI/tmp (default /tmp/cejobs-hosts)
#
# Every host shares this machine's files (as NFS would), its hostname and its pids; only the
# network differs. So logs name hosts by address, and each host gets its own TMPDIR.
set -euo pipefail

NAME="${CEJOBS_HOSTS_NAME:-cej}"
SUBNET="${CEJOBS_HOSTS_SUBNET:-10.213.7}"
BASE="${CEJOBS_HOSTS_DIR:-/tmp/cejobs-hosts}"
NET_NS="${NAME}-net"

die() { echo "hosts.sh: error: $*" >&2; exit 2; }   # bad input or a missing prerequisite
log() { echo "hosts.sh: $*" >&2; }

[[ "${NAME}" =~ ^[A-Za-z][A-Za-z0-9]{0,10}$ ]] || die "CEJOBS_HOSTS_NAME must be 1-11 letters/digits, starting with a letter: '${NAME}'"
[[ "${SUBNET}" =~ ^10\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "CEJOBS_HOSTS_SUBNET must be 10.X.Y (a private range): '${SUBNET}'"

host_index() {  # "h2" or "2" -> 2
    local h="${1#h}"
    [[ "${h}" =~ ^[0-9]+$ ]] || die "not a host: '$1' (use h0, h1, ...)"
    printf '%s\n' "${h}"
}
ns_of() { printf '%s-h%s\n' "${NAME}" "$(host_index "$1")"; }
addr_of() { printf '%s.%s\n' "${SUBNET}" "$(( 10 + $(host_index "$1") ))"; }
dev_of() { printf '%sh%s\n' "${NAME}" "$(host_index "$1")"; }   # veth names: 15 chars at most
exists() { ip netns list | awk '{print $1}' | grep -qx "$1"; }
hosts() { ip netns list | awk '{print $1}' | sed -n "s/^${NAME}-h\([0-9]\+\)\$/h\1/p" | sort -V; }

cmd_up() {
    local n="${1:-3}" i ns dev
    [[ "${n}" =~ ^[0-9]+$ ]] && (( n >= 1 && n <= 99 )) || die "N must be 1..99: '${n}'"
    [[ "$(id -u)" == 0 ]] || die "network namespaces need root"
    command -v ip >/dev/null || die "iproute2 (ip) is not installed"
    if ! exists "${NET_NS}"; then
        ip netns add "${NET_NS}"
        ip netns exec "${NET_NS}" ip link set lo up
        ip netns exec "${NET_NS}" ip link add br0 type bridge
        ip netns exec "${NET_NS}" ip link set br0 up
    fi
    for (( i = 0; i < n; i++ )); do
        ns="$(ns_of "h${i}")" dev="$(dev_of "h${i}")"
        mkdir -p "${BASE}/${NAME}/h${i}/tmp"
        exists "${ns}" && continue
        ip netns add "${ns}"
        ip netns exec "${ns}" ip link set lo up
        ip link add "${dev}" type veth peer name "${dev}b"
        ip link set "${dev}" netns "${ns}"
        ip link set "${dev}b" netns "${NET_NS}"
        ip netns exec "${NET_NS}" ip link set "${dev}b" master br0
        ip netns exec "${NET_NS}" ip link set "${dev}b" up
        ip netns exec "${ns}" ip addr add "$(addr_of "h${i}")/24" dev "${dev}"
        ip netns exec "${ns}" ip link set "${dev}" up
    done
    log "up: ${n} host(s) ${NAME}-h0..h$(( n - 1 )) on ${SUBNET}.0/24 (bridge in ${NET_NS})"
}

kill_ns() {  # SIGKILL every process of namespace $1 until none is left
    local ns="$1" pids i
    exists "${ns}" || return 0
    for (( i = 0; i < 50; i++ )); do
        pids="$(ip netns pids "${ns}" 2>/dev/null || true)"
        [[ -n "${pids}" ]] || return 0
        # shellcheck disable=SC2086  # pids are plain numbers
        kill -CONT ${pids} 2>/dev/null || true   # stopped ones too
        # shellcheck disable=SC2086
        kill -KILL ${pids} 2>/dev/null || true
        sleep 0.1
    done
    log "processes left in ${ns}: $(ip netns pids "${ns}" | tr '\n' ' ')"
}

cmd_down() {
    local h dev
    for h in $(hosts); do kill_ns "$(ns_of "${h}")"; done
    for h in $(hosts); do ip netns del "$(ns_of "${h}")" 2>/dev/null || true; done
    kill_ns "${NET_NS}"
    if exists "${NET_NS}"; then ip netns del "${NET_NS}" 2>/dev/null || true; fi
    # a veth left in the root namespace by an `up` that was killed half-way
    for dev in $(ip -o link show | awk -F': ' '{print $2}' | cut -d@ -f1 | grep -E "^${NAME}h[0-9]+b?$" || true); do
        ip link del "${dev}" 2>/dev/null || true
    done
    rm -rf "${BASE:?}/${NAME}"
    log "down: ${NAME}"
}

cmd_prune() {
    local name pid
    for name in $(ip netns list | awk '{print $1}' | sed -n 's/^\([A-Za-z][A-Za-z]*[0-9]\+\)-net$/\1/p'); do
        pid="$(printf '%s\n' "${name}" | sed 's/^[A-Za-z]*//')"
        if ! kill -0 "${pid}" 2>/dev/null; then
            log "pruning ${name} (owner pid ${pid} is gone)"
            CEJOBS_HOSTS_NAME="${name}" "$0" down
        fi
    done
}

cmd_status() {
    local h ns state
    exists "${NET_NS}" || { echo "${NAME}: down"; return 3; }
    for h in $(hosts); do
        ns="$(ns_of "${h}")"
        state="$(ip netns exec "${ns}" cat "/sys/class/net/$(dev_of "${h}")/operstate" 2>/dev/null || echo '?')"
        echo "${h} ${ns} $(addr_of "${h}") link ${state} processes $(ip netns pids "${ns}" | wc -l)"
    done
}

cmd_exec() {
    local h="$1" ns
    shift
    ns="$(ns_of "${h}")"
    exists "${ns}" || die "no host ${h} (${ns}); run: $0 up"
    (( $# )) || die "usage: $0 exec hI CMD..."
    # nsenter enters the network namespace only: `ip netns exec` would also remount /sys,
    # hiding /sys/fs/cgroup, which slurmd needs
    exec nsenter --net="/var/run/netns/${ns}" env TMPDIR="${BASE}/${NAME}/h$(host_index "${h}")/tmp" \
        CEJOBS_HOST_ADDR="$(addr_of "${h}")" "$@"
}

link() {
    local ns
    ns="$(ns_of "$1")"
    exists "${ns}" || die "no host $1"
    ip netns exec "${ns}" ip link set "$(dev_of "$1")" "$2"
}

case "${1:-}" in
    up) cmd_up "${2:-3}" ;;
    down) cmd_down ;;
    prune) cmd_prune ;;
    status) cmd_status ;;
    exec) shift; (( $# )) || die "usage: $0 exec hI CMD..."; cmd_exec "$@" ;;
    addr) addr_of "${2:?usage: $0 addr hI}" ;;
    kill) kill_ns "$(ns_of "${2:?usage: $0 kill hI}")" ;;
    cut) link "${2:?usage: $0 cut hI}" down ;;
    heal) link "${2:?usage: $0 heal hI}" up ;;
    *) echo "usage: $0 {up [N]|down|prune|status|exec hI CMD...|addr hI|kill hI|cut hI|heal hI}" >&2; exit 2 ;;
esac
