#!/bin/bash
# THROWAWAY device script (worker 3): train the shipped digits models on one GPU, measure CE quality.
set -u
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
REPO=$PWD
L=/tmp/logs; mkdir -p $L data/digits /tmp/pack/digits /tmp/pack/variants
nvidia-smi -L; python3 -c "import torch, sklearn; print('torch', torch.__version__, 'sklearn', sklearn.__version__)"
T="python3 -m cejobs.train"
# WRN-40-2 iteration timings first, on an idle GPU
timeout 40 python3 .w3_bench_wrn.py > $L/bench.log 2>&1
# diffusion variants, each in its own folder so that every checkpoint records --out data/digits/diffusion.pt
for v in "a --steps 4000 --lr 2e-4" "b --steps 4000 --lr 5e-4" "c --steps 8000 --lr 5e-4"; do
  set -- $v; name=$1; shift
  mkdir -p /tmp/var-$name && (cd /tmp/var-$name && timeout 360 $T diffusion --dataset digits --preset digits --warmup 200 --ema 0.999 --log-every 500 --no-progress --device cuda --out data/digits/diffusion.pt "$@" > $L/diffusion-$name.log 2>&1; cp data/digits/diffusion.pt /tmp/pack/variants/diffusion-$name.pt) &
done
timeout 360 $T classifier --dataset digits --preset digits --eval-eps 0.25,0.5,1.0 --no-progress --device cuda --out data/digits/classifier-standard.pt > $L/classifier-standard.log 2>&1 &
for e in 0.25 0.5 1.0; do
  timeout 360 $T classifier --dataset digits --preset digits --eps $e --eval-eps 0.25,0.5,1.0 --no-progress --device cuda --out data/digits/classifier-l2-eps$e.pt > $L/classifier-l2-eps$e.log 2>&1 &
done
wait
cp data/digits/classifier-*.pt /tmp/pack/digits/ 2>/dev/null; rm -f /tmp/pack/digits/*.resume.pt
nvidia-smi --query-gpu=name --format=csv
for v in a b c; do
  [ -f /tmp/pack/variants/diffusion-$v.pt ] && timeout 45 python3 .w3_ce_quality.py $L/ce-quality-$v.json /tmp/pack/variants/diffusion-$v.pt data/digits/classifier-standard.pt data/digits/classifier-l2-eps0.25.pt data/digits/classifier-l2-eps0.5.pt data/digits/classifier-l2-eps1.0.pt > $L/ce-quality-$v.log 2>&1
done
for f in $L/*.log; do echo "=== $f"; grep -v "^epoch [0-9]*/100" $f | tail -30; grep "^epoch 100/100" $f; done
cp -r $L /tmp/pack/logs
tar -C /tmp/pack -czf $OUT/w3.tgz .
ls -la $OUT
