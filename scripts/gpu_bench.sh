#!/usr/bin/env bash
# The GPU figures of docs/performance.md: GPU tests, sampler throughput/MFU and training step time
# of the paper-size U-Net. Needs only torch (no ray/zarr/submitit). Results go to ${OUT:-runs/gpu}.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$out/device.txt"
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_neighborhood.py \
  tests/test_noise.py tests/test_sampler.py 2>&1 | tail -5 | tee "$out/pytest.txt"
bench() { name=$1; shift; python3 -m cejobs.bench "$@" > "$out/$name.json" 2> "$out/$name.err"; \
  echo "$name: $(tr -d '\n ' < "$out/$name.json" | head -c 600)"; }
bench sampler-bf16 sampler --preset paper --batch 1000 --steps 10 --precision bf16 --device cuda
bench sampler-fp32 sampler --preset paper --batch 1000 --steps 5 --precision fp32 --device cuda --repeat 2
bench sampler-bf16-b250 sampler --preset paper --batch 250 --steps 10 --precision bf16 --device cuda
bench sampler-bf16-compile sampler --preset paper --batch 1000 --steps 10 --precision bf16 --device cuda --compile
bench train-bf16 train --preset paper --batch 128 --precision bf16 --device cuda --repeat 5
bench train-fp32 train --preset paper --batch 128 --precision fp32 --device cuda --repeat 5
