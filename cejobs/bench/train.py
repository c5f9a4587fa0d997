"""`python -m cejobs.bench train`: seconds per training iteration of a U-Net preset."""

from __future__ import annotations

import argparse

import torch

from cejobs.bench.common import bench_device, device_name, median_seconds, preset_image_shape
from cejobs.method.params import DEFAULT_PRECISION, NET_PRECISIONS, net_dtype_of
from cejobs.method.sde import VPSDE
from cejobs.models.unet import UNET_PRESETS, UNet


def bench_train(args) -> dict:
    """One training iteration = VP denoising loss, backward, grad-clip, Adam step."""
    device = bench_device(args.device)
    torch.manual_seed(0)
    net = UNet(**UNET_PRESETS[args.preset]).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    sde = VPSDE()
    b = args.batch
    x0 = torch.rand(b, *preset_image_shape(args.preset), device=device) * 2 - 1
    y = torch.arange(b, device=device) % 11
    dtype = net_dtype_of(args.precision)

    def step():
        t = torch.rand(b, device=device) * (1 - 1e-5) + 1e-5
        z = torch.randn_like(x0)
        a, s = sde.alpha(t)[:, None, None, None], sde.sigma(t)[:, None, None, None]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = ((net(a * x0 + s * z, t, y).float() - z) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    seconds = median_seconds(step, device, args.repeat)
    return dict(bench="train", device=device_name(device), preset=args.preset, batch=b,
                precision=args.precision, seconds_per_iteration=seconds,
                images_per_s=b / seconds, torch=torch.__version__)


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="seconds per training iteration of a U-Net preset",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="paper", choices=sorted(UNET_PRESETS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--precision", default=DEFAULT_PRECISION, choices=sorted(NET_PRECISIONS))
    p.add_argument("--device", default="auto")
    p.add_argument("--repeat", type=int, default=3)
    p.set_defaults(run=bench_train)
