#!/usr/bin/env bash
# The fast path's GPU figures in one call, under 8 minutes on an H200 (docs/performance.md,
# "Fast path"):
#   fast-bf16       the fast path's CE/s (bf16, paper preset, batch 1000), MFU of the whole step
#                   against a bf16 8192^3 matmul measured in the same run, and the fp32 eager
#                   sampler's CE/s in the same run (same net, same batch);
#   check-digits    bench sampler --check on the GPU: the shipped (trained) digits model, 100 CEs
#                   at 1000 steps, fast bf16 (compiled, CUDA graphs) vs fp32 eager, same noise;
#   check-paper     the same on the paper preset, only with PAPER_MODEL=<a trained paper-preset
#                   checkpoint>: random weights make the guided sampler chaotic, so their value
#                   would measure the random net, not the fast path (docs/performance.md). The
#                   fast path is padded to the batch of 1000, so its compiled graph is the one
#                   fast-bf16 left in the inductor cache;
#   generate-paper  the generation worker's CE maker (jobs/ce_maker.py) over 5 shards of 1000
#                   CEs, random untrained paper checkpoint, 100 steps, with start-up, compile,
#                   source loading, sampling, distances and writes reported apart. The GPU image
#                   has no zarr, so np.savez stands in for the store write (bench store measures
#                   zarr on its own: 0.094 s per 11.7 MiB shard);
#   fusion          the kernels torch.compile emits for GroupNorm -> SiLU -> conv (bf16, 32x32x128);
#   pytest          the GPU tests (fast path with CUDA graphs included) and the sampler tests.
# Needs only torch and numpy: no ray, zarr or submitit, nothing installed. Results go to
# ${OUT:-runs/gpu}/*.json; a summary of every figure is printed last.
#   scripts/gpu_bench.sh ablations1  the fast path without CUDA graphs, without channels-last,
#                                    without SDPA (a fresh compile each, at most 150 s)
#   scripts/gpu_bench.sh ablations2  the fast path with the Triton GroupNorm+SiLU kernel, the
#                                    --compile (network only) path, the fast path eager
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-${TMPDIR:-/tmp}/cejobs-inductor}"
start=$(date +%s)
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$out/device.txt"
bench() {  # name, time limit (s), bench arguments
  local name=$1 limit=$2 t0 rc; shift 2; t0=$(date +%s)
  timeout "$limit" python3 -m cejobs.bench "$@" > "$out/$name.json" 2> "$out/$name.err"; rc=$?
  echo "$name: exit $rc after $(( $(date +%s) - t0 )) s: python -m cejobs.bench $*"
  grep -v Warning "$out/$name.err" | tail -3 | sed 's/^/  | /'
}
P="--preset paper --device cuda --precision bf16"
F="sampler $P --batch 1000 --steps 20 --repeat 3"
case "${1:-}" in
  ablations1)
    bench abl-no-graphs 150 $F --fast --compile --no-cuda-graphs
    bench abl-no-channels-last 150 $F --fast --compile --no-channels-last
    bench abl-no-sdpa 150 $F --fast --compile --no-sdpa
    exit 0 ;;
  ablations2)
    bench abl-triton-norm 150 $F --fast --compile --triton-norm
    bench abl-net-compile 150 $F --compile
    bench abl-fast-eager 60 $F --fast
    exit 0 ;;
esac
bench fast-bf16 170 sampler $P --fast --compile --batch 1000 --steps 20 --repeat 3 \
  --baseline --baseline-steps 3
bench check-digits 100 sampler --preset digits --device cuda --precision bf16 --check --compile \
  --batch 100 --steps 1000
if [ -n "${PAPER_MODEL:-}" ]; then  # a trained paper-preset checkpoint: the paper-preset check
  bench check-paper 150 sampler $P --check --compile --model "$PAPER_MODEL" --batch 100 \
    --fast-batch 1000 --steps 1000
fi
bench generate-paper 100 generate $P --fast --compile --sources 250 --shard-size 50 \
  --per-class 2 --batch-size 1000 --steps 100
bench fusion 45 fusion --device cuda --batch 64 --channels 128 --size 32
left=$(( 440 - ($(date +%s) - start) ))
if [ "$left" -gt 30 ]; then
  timeout "$left" python3 -m pytest -q -p no:cacheprovider tests/unit/method/test_gpu.py \
    tests/unit/method/test_noise.py tests/unit/method/test_neighborhood.py \
    tests/unit/method/test_sampler.py 2>&1 | tail -4 | tee "$out/pytest.txt"
else
  echo "pytest: skipped, $left s left of the 440 s budget" | tee "$out/pytest.txt"
fi
python3 - "$out" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
def load(name):
    try:
        return json.loads((out / f"{name}.json").read_text())
    except Exception:
        return None
f, g, k = load("fast-bf16"), load("generate-paper"), load("fusion")
na = "not measured (see the .err file)"
print("\n== fast path figures:", (out / "device.txt").read_text().strip())
if f:
    print(f"fast path, bf16, paper, batch {f['batch_ces']}: {f['ces_per_s_at_1000_steps']:.2f} CE/s "
          f"(step {f['step_ms']:.1f} ms, mode {f['mode']}, compile {f['compile_seconds'] or 0:.0f} s)"
          f"   target >= 16, stretch 20")
    print(f"share of the measured bf16 matmul peak: {100 * f['mfu']:.1f}% "
          f"({f['achieved_tflops']:.0f} of {f['matmul_peak_tflops']:.0f} TFLOP/s, "
          f"{f['gflop_per_image_forward']:.2f} GFLOP/image/forward)   target >= 50%")
    if "fp32_eager_ces_per_s_at_1000_steps" in f:
        print(f"fp32 eager, same run: {f['fp32_eager_ces_per_s_at_1000_steps']:.2f} CE/s; fast path "
              f"is {f['speedup_vs_fp32_eager']:.1f}x   target >= 10x")
else:
    print("fast path:", na)
for name in ("check-digits", "check-paper"):
    c = load(name)
    if c:
        fb = c["fast_bf16"]
        print(f"--check, {c['net']}, {c['ces']} CEs x {c['steps']} steps: median {c['value']:.4f} "
              f"(q90 {fb['q90']:.4f}, max {fb['max']:.4f}; {fb['mode']}, compile "
              f"{fb['compile_seconds'] or 0:.0f} s)   must be <= {c['tolerance']}: "
              f"{'passed' if c['passed'] else 'FAILED'}")
    elif name == "check-paper" and not (out / f"{name}.err").exists():
        print("--check, paper preset: not measured (needs PAPER_MODEL=<trained checkpoint>)")
    else:
        print(f"--check ({name}):", na)
if g:
    ratio = f"{g['ces_per_s_at_1000_steps'] / f['ces_per_s_at_1000_steps']:.1%} of the bench" if f else ""
    print(f"end to end, {g['shards']} shards of {g['ces_per_shard']} CEs at {g['steps']} steps: "
          f"{g['ces_per_s_at_1000_steps']:.2f} CE/s at 1000 steps over the last "
          f"{g['steady_shards']} shards, {ratio}   target >= 90%")
    print(f"  imports {g['imports_seconds'] or 0:.1f} s, start-up {g['startup_seconds']:.1f} s "
          f"(dataset, checkpoint, model to GPU), compile "
          f"{g['compile_seconds'] or 0:.1f} s, first shard {g['first_shard_seconds']:.1f} s; per shard: "
          f"sources {g['load_seconds_mean']:.3f} s, sampling {g['sample_seconds_mean']:.2f} s, "
          f"distances+copy {g['other_seconds_mean']:.3f} s, write {g['write_seconds_mean']:.3f} s "
          f"({g['write_stand_in']})")
else:
    print("end to end:", na)
print("GroupNorm+SiLU in one compiled kernel:",
      k["group_norm_and_silu_in_one_kernel"] if k else na, k["kernels"] if k else "")
print("pytest:", (out / "pytest.txt").read_text().strip().splitlines()[-1:])
EOF
echo "total: $(( $(date +%s) - start )) s"
