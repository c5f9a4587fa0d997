"""The one-pass GroupNorm+SiLU Triton kernel (models/fused.py) against PyTorch.

Without a GPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, read when a kernel
is defined), in a subprocess so that this process's Triton stays untouched.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="needs triton")

SCRIPT = r"""
import json, torch
from cejobs.models.fused import build_kernel, reference_group_norm_silu, triton_group_norm_silu
torch.manual_seed(0)
kernel = build_kernel()
out = {}
# (batch, channels, groups, size): paper-like 4 channels x 32x32 per group, 12 channels per
# group (a decoder concat: not a power of two), and an odd 6x6 image
for b, c, g, s in [(2, 16, 4, 8), (2, 48, 4, 4), (3, 8, 2, 6)]:
    norm = torch.nn.GroupNorm(g, c, eps=1e-6)
    torch.nn.init.normal_(norm.weight, 1.0, 0.3)
    torch.nn.init.normal_(norm.bias, 0.0, 0.3)
    x = torch.randn(b, c, s, s) * 2 + 0.5
    ref = reference_group_norm_silu(x, norm).detach()
    for layout in ("nchw", "nhwc"):
        xl = x if layout == "nchw" else x.contiguous(memory_format=torch.channels_last)
        y = triton_group_norm_silu(xl, norm, kernel)
        yb = triton_group_norm_silu(xl.bfloat16(), norm, kernel)
        refb = reference_group_norm_silu(xl.bfloat16().float(), norm).detach()
        out[f"{b}x{c}x{s} g{g} {layout}"] = dict(
            fp32=(y - ref).abs().max().item(),
            bf16=((yb.float() - refb).abs() / (refb.abs() + 1)).max().item(),
            bf16_dtype=str(yb.dtype), same_layout=y.stride() == xl.stride())
print(json.dumps(out))
"""


def test_kernel_matches_group_norm_silu_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                       env=env, cwd=REPO, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    results = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(results) == 6
    for name, v in results.items():
        assert v["fp32"] < 1e-5, name
        assert v["bf16"] < 2 ** -7, name  # one bf16 ulp of the output (the interpreter truncates)
        assert v["bf16_dtype"] == "torch.bfloat16" and v["same_layout"], name
