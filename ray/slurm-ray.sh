#!/bin/bash
# Start Ray on a multi-node SLURM allocation, run one cejobs generation on it, stop Ray:
#
#   sbatch --nodes=4 ray/slurm-ray.sh CONFIG.toml [python -m cejobs.generate flags]
#   sbatch --nodes=2 --partition=gpu ray/slurm-ray.sh configs/cifar10.toml --store "/scratch/me/c10.zarr"
#
# The head runs on the first node of the allocation (where this script runs) and a worker on
# every other node, one srun task per node. The driver runs on the head with
# `--backend ray --ray-address HEAD_IP:PORT`: one actor per GPU of every node. Its exit status
# is this job's: 0 only when every shard is done. Submitting the same command again resumes.
#
# Two ways to start Ray, chosen by CEJOBS_RAY_LAUNCH:
#   auto (default)  `ray symmetric-run` when this Ray has it (2.49+), else srun
#   symmetric       `srun ray symmetric-run --address HEAD:PORT --min-nodes N -- driver`:
#                   Ray starts head and workers itself and runs `ray stop` on every node at the
#                   end, which stops every Ray of yours on those nodes (hence --exclusive)
#   srun            `srun ray start --head --block` on the first node, `srun ray start
#                   --address HEAD:PORT --block` on the others; at the end this script ends
#                   exactly those srun steps
#
# Run from the cejobs checkout (or with cejobs pip-installed in the environment): relative
# paths (config, store, model, data) are relative to the directory you submit from, which is
# every task's working directory. The store must be on storage every node mounts.
# Environment: CEJOBS_PYTHON (default: python), CEJOBS_RAY (default: ray), CEJOBS_RAY_PORT
# (default: 6379), CEJOBS_RAY_HEAD_IP (default: the first node's address from getent, else its
# NodeAddr in SLURM), CEJOBS_RAY_START_ARGS (extra `ray start` flags, e.g. "--temp-dir
# /local/ray"), CEJOBS_RAY_TEMP_DIR (srun launch: each node's Ray uses <dir>/<node name> as
# its --temp-dir, for nodes whose /tmp is shared or small), RAY_AUTH_MODE (default: token, see
# below).
# The dashboard listens on 127.0.0.1:8265 of the head only; see ray/README.md for the tunnel.
#
#SBATCH --job-name=cejobs-ray
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --gres=gpu:4
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out

set -euo pipefail
if (( $# < 1 )); then
    echo "usage: sbatch [--nodes=N] ray/slurm-ray.sh CONFIG.toml [python -m cejobs.generate flags]" >&2
    exit 2
fi
config="$1"
shift
python="${CEJOBS_PYTHON:-python}"
ray_cli="${CEJOBS_RAY:-ray}"
port="${CEJOBS_RAY_PORT:-6379}"
launch="${CEJOBS_RAY_LAUNCH:-auto}"
read -r -a extra_start <<< "${CEJOBS_RAY_START_ARGS:-}"

# One authentication mode for the head, the workers and the driver (ray/README.md): token,
# unless RAY_AUTH_MODE says otherwise. Every node reads the token from ~/.ray/auth_token on the
# shared home (or from RAY_AUTH_TOKEN_PATH on shared storage); it is made here if missing and
# never printed.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
# Ray runs its workers at nice 15 by default; on a node shared with other jobs that starves
# them (docs/performance.md, "CPU threads under load").
export RAY_worker_niceness="${RAY_worker_niceness:-0}"
if [[ "$RAY_AUTH_MODE" == token ]]; then
    "$ray_cli" get-auth-token --generate > /dev/null
fi

mapfile -t nodes < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
num_nodes="${#nodes[@]}"
head_node="${nodes[0]}"
head_ip="${CEJOBS_RAY_HEAD_IP:-$(getent ahostsv4 "$head_node" | awk 'NR == 1 { print $1 }' || true)}"
if [[ -z "$head_ip" ]]; then  # a node name that does not resolve: SLURM's NodeAddr
    head_ip="$(scontrol show node -o "$head_node" | sed -n 's/.* NodeAddr=\([^ ]*\).*/\1/p')"
fi
if [[ -z "$head_ip" ]]; then
    echo "error: cannot resolve $head_node; set CEJOBS_RAY_HEAD_IP" >&2
    exit 2
fi
address="$head_ip:$port"
start_args=(--dashboard-host=127.0.0.1 --disable-usage-stats "${extra_start[@]}")
if [[ -n "${SLURM_CPUS_ON_NODE:-}" ]]; then
    start_args+=(--num-cpus="$SLURM_CPUS_ON_NODE")  # GPUs: Ray reads CUDA_VISIBLE_DEVICES
fi
driver=("$python" -m cejobs.generate --config "$config" --backend ray --ray-address "$address" "$@")

if [[ "$launch" == auto ]]; then
    if "$ray_cli" symmetric-run --help > /dev/null 2>&1; then launch=symmetric; else launch=srun; fi
fi
echo "cejobs: Ray head $address on $head_node, $num_nodes node(s), launch=$launch" >&2

if [[ "$launch" == symmetric ]]; then
    # Each node's task starts Ray; the head's also runs the driver and passes on its status.
    # --wait: the workers' tasks end at most 60 s after the head's.
    export RAY_SYMMETRIC_RUN_CLUSTER_WAIT_TIMEOUT="${RAY_SYMMETRIC_RUN_CLUSTER_WAIT_TIMEOUT:-300}"
    exec srun --nodes="$num_nodes" --ntasks="$num_nodes" --ntasks-per-node=1 --wait=60 \
        "$ray_cli" symmetric-run --address "$address" --min-nodes "$num_nodes" \
        "${start_args[@]}" -- "${driver[@]}"
elif [[ "$launch" != srun ]]; then
    echo "error: CEJOBS_RAY_LAUNCH must be auto, symmetric or srun (got $launch)" >&2
    exit 2
fi

steps=()
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    # End exactly the srun steps started here; each `ray start --block` then stops its node.
    local pid
    for pid in "${steps[@]}"; do kill -TERM "$pid" 2> /dev/null || true; done
    wait 2> /dev/null || true
}
trap cleanup EXIT

# `ray ARGS` on a node, with its own temp dir under CEJOBS_RAY_TEMP_DIR when that is set
on_node=(bash -c 'args=("$@"); if [[ -n "${CEJOBS_RAY_TEMP_DIR:-}" ]]; then
    args+=(--temp-dir="$CEJOBS_RAY_TEMP_DIR/$SLURMD_NODENAME"); fi; exec "${args[@]}"' ray-on-node)
srun --nodes=1 --ntasks=1 -w "$head_node" \
    "${on_node[@]}" "$ray_cli" start --head --block --node-ip-address="$head_ip" --port="$port" \
    "${start_args[@]}" &
steps+=("$!")

wait_for_nodes() {  # until `want` nodes are alive, for at most 300 s
    local want="$1" deadline=$((SECONDS + 300)) have
    while (( SECONDS < deadline )); do
        have="$("$python" - "$address" << 'EOF' 2> /dev/null || echo 0
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(sum(1 for n in ray.nodes() if n["Alive"]))
EOF
)"
        if (( have >= want )); then return 0; fi
        sleep 5
    done
    echo "error: only ${have:-0} of $want Ray node(s) joined within 300 s" >&2
    return 1
}

wait_for_nodes 1
if (( num_nodes > 1 )); then
    srun --nodes=$((num_nodes - 1)) --ntasks=$((num_nodes - 1)) --ntasks-per-node=1 \
        --exclude="$head_node" \
        "${on_node[@]}" "$ray_cli" start --address="$address" --block "${start_args[@]}" &
    steps+=("$!")
    wait_for_nodes "$num_nodes"
fi

status=0
"${driver[@]}" || status=$?
exit "$status"
