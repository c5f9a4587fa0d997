"""`python -m cejobs.bench generate` runs the real generation worker (no store): the GPU
script's end-to-end figure depends on it, so it runs here on the tiny preset."""

from __future__ import annotations

import json

from tests.conftest import run_module


def test_bench_generate_runs_the_worker_on_cpu():
    r = run_module("cejobs.bench", "generate", "--preset", "tiny", "--sources", "4",
                   "--shard-size", "2", "--steps", "3", "--per-class", "2", "--batch-size", "40",
                   "--precision", "fp32", "--device", "cpu", "--no-fast", timeout=300)
    out = json.loads(r.stdout[r.stdout.index("{"):])
    assert out["shards"] == 2 and out["steady_shards"] == 1 and out["steps"] == 3
    # the random .npz has labels 0..3 for its 4 sources: 4 classes, 2 sources x 4 x 2 per class
    assert out["ces_per_shard"] == 16
    assert 0 < out["end_to_end_share"] <= 1
