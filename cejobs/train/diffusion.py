"""Training the class-conditional score U-Net (paper sec. 3 and appendix; score_sde's VP recipe).

Each step: a batch x0 in model space (2x - 1), t ~ U(t_eps, 1), z ~ N(0, I),
x_t = alpha_t x0 + sigma_t z, labels replaced by the null label with probability `label_drop`
(classifier-free guidance), and the loss mean((eps_theta(x_t, t, y) - z)^2) (DDPM's L_simple:
the mean over elements). Adam with linear warm-up, gradient clipping, and an EMA of the weights,
which is what the output checkpoint holds. CIFAR10 batches are flipped horizontally at random
(each image with probability 1/2), as score_sde's CIFAR10 configs do (`data.random_flip`); SVHN
and digits are not (a flipped digit is another shape). The flips of step k are a function of
(seed, k) alone, so a resumed run draws the same ones.
"""

from __future__ import annotations

import time
from collections import deque
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from cejobs.data import load_dataset
from cejobs.models import UNET_PRESETS, UNet
from cejobs.models.checkpoint import save_checkpoint
from cejobs.method.sde import VPSDE
from cejobs.devices import resolve_device
from cejobs.settings import setting
from cejobs.train.common import (
    EMA,
    TrainError,
    TrainSettings,
    open_resume,
    command_line,
    config_dict,
    lr_at,
    resume_path,
    rng_state,
    set_rng_state,
    set_threads,
    stream_batch,
)


@dataclass
class DiffusionTrainConfig(TrainSettings):
    preset: str = setting("paper", "U-Net preset; its image shape and classes follow the dataset",
                          choices=tuple(UNET_PRESETS), identity=True)
    base_channels: int | None = setting(None, "override the preset's base width", identity=True,
                                         ge=4)
    channel_mult: str | None = setting(None, "override the preset's width multipliers, e.g. 1,2,2,2", identity=True)
    num_res_blocks: int | None = setting(None, "override the preset's residual blocks per resolution", identity=True, ge=1)
    attn_resolutions: str | None = setting(None, "override the preset's attention resolutions, e.g. 16 ('' for none)", identity=True)
    dropout: float | None = setting(None, "override the preset's dropout", identity=True)
    steps: int = setting(1_000_000, "training steps (paper: 1M)", ge=1)
    lr: float = setting(2e-4, "Adam learning rate", identity=True, gt=0)
    warmup: int = setting(5000, "linear learning-rate warm-up steps", identity=True, ge=0)
    grad_clip: float = setting(1.0, "gradient-norm clip (0: off)", identity=True, ge=0)
    label_drop: float = setting(0.3, "probability of replacing a label by the null label", identity=True, ge=0, lt=1)
    ema: float = setting(0.9999, "EMA decay of the saved weights (short runs: 0.999)", identity=True, ge=0, lt=1)
    t_eps: float = setting(1e-5, "smallest training time t (score_sde's continuous-time eps)", identity=True, gt=0, lt=1)
    precision: str = setting("fp32", "network precision (bf16 autocast on GPUs; loss and optimizer in fp32)",
                             choices=("fp32", "bf16"), identity=True)
    flip: str = setting("auto", "random horizontal flips: auto (on for cifar10, as score_sde; off for svhn "
                        "and digits) | on | off", choices=("auto", "on", "off"), identity=True)
    seed: int = setting(0, "seed of the initial weights, data order and noise", identity=True)
    out: str = setting("runs/diffusion.pt", "output checkpoint (EMA weights); resume state goes to OUT.resume.pt")
    save_every: int = setting(5000, "write OUT.resume.pt every this many steps and at the end (0: never)", ge=0)
    log_every: int = setting(1000, "print a log line every this many steps", ge=0)
    resume: str | None = setting(None, "continue from this resume file (same settings; a larger --steps extends)")


def _int_tuple(text: str, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise TrainError(f"--{flag} must be comma-separated integers (got {text!r})") from None


def unet_kwargs(cfg: DiffusionTrainConfig, image_shape, num_classes: int) -> dict:
    """The preset's constructor arguments, with the dataset's shape and classes and any overrides."""
    kw = dict(UNET_PRESETS[cfg.preset])
    kw.update(image_channels=image_shape[0], image_size=image_shape[1], num_classes=num_classes)
    if image_shape[1] != image_shape[2]:
        raise TrainError(f"the U-Net needs square images, got {image_shape}")
    for name in ("base_channels", "num_res_blocks", "dropout"):
        if getattr(cfg, name) is not None:
            kw[name] = getattr(cfg, name)
    if cfg.channel_mult is not None:
        kw["channel_mult"] = _int_tuple(cfg.channel_mult, "channel-mult")
    if cfg.attn_resolutions is not None:
        kw["attn_resolutions"] = _int_tuple(cfg.attn_resolutions, "attn-resolutions")
    return kw


def uses_flips(cfg: DiffusionTrainConfig) -> bool:
    return cfg.flip == "on" or (cfg.flip == "auto" and cfg.dataset == "cifar10")


def flip_batch(x: torch.Tensor, seed: int, step: int, on: bool) -> torch.Tensor:
    """x (b, C, H, W) with each image flipped left-right with probability 1/2, drawn from
    (seed, step) alone (score_sde's random_flip); x itself when not `on`."""
    if not on:
        return x
    flip = torch.from_numpy(np.random.default_rng([seed, 0xF11B, step]).random(len(x)) < 0.5)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def _mean(values) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


def train_diffusion(cfg: DiffusionTrainConfig, argv: list[str] | None = None) -> str:
    """Train (or resume) a diffusion model as `cfg` says; returns the output checkpoint path."""
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    data = load_dataset(cfg.dataset, cfg.data_root, "train")
    kwargs = unet_kwargs(cfg, data.image_shape, data.num_classes)

    torch.manual_seed(cfg.seed)
    try:
        model = UNet(**kwargs)
    except ValueError as exc:
        raise TrainError(f"cannot build the U-Net: {exc}") from exc
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    ema = EMA(model, cfg.ema)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    gen = torch.Generator(device).manual_seed(cfg.seed)
    sde = VPSDE()
    flip = uses_flips(cfg)
    start, recent = 0, deque(maxlen=1000)  # losses of the last 1000 steps

    if cfg.resume:
        state, extra = open_resume(cfg, "diffusion", device)
        ema.model.load_state_dict(state.model.state_dict())
        ema.updates = extra["ema_updates"]
        model.load_state_dict(extra["model"])
        opt.load_state_dict(extra["optimizer"])
        set_rng_state(extra["rng"], device, gen)
        start = extra["step"]
        recent.extend(extra["recent_losses"])
        if start >= cfg.steps:
            raise TrainError(f"{cfg.resume} is already at step {start}; pass --steps larger than that to go on")

    def save(path: str, step: int, with_state: bool) -> None:
        meta = dict(
            dataset=cfg.dataset, split="train", centered=True,
            metrics=dict(steps=step, train_loss=_mean(recent), train_loss_steps=len(recent)),
            train=dict(config_dict(cfg), command=command_line(argv), torch=str(torch.__version__)),
        )
        extra = None
        if with_state:
            extra = dict(
                trainer="diffusion", config=cfg.identity(), step=step, model=model.state_dict(),
                optimizer=opt.state_dict(), ema_updates=ema.updates, rng=rng_state(device, gen),
                recent_losses=list(recent),
            )
        save_checkpoint(path, ema.model, kind="diffusion", arch="unet", arch_kwargs=kwargs, meta=meta, extra=extra)

    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if cfg.precision == "bf16" else nullcontext()
    )
    n_params = sum(p.numel() for p in model.parameters())
    tqdm.write(
        f"diffusion: {cfg.dataset} ({len(data)} images {data.image_shape}), U-Net {cfg.preset} "
        f"{n_params / 1e6:.2f}M params, flips {'on' if flip else 'off'}, steps {start}..{cfg.steps} "
        f"on {device}"
    )
    model.train()
    bar = tqdm(total=cfg.steps, initial=start, disable=not cfg.progress, dynamic_ncols=True, desc="diffusion")
    window_loss, window_n, t0 = 0.0, 0, time.perf_counter()
    for step in range(start, cfg.steps):
        idx = stream_batch(cfg.seed, len(data), cfg.batch_size, step)
        x0 = 2.0 * flip_batch(data.images(idx), cfg.seed, step, flip) - 1.0  # model space
        x0 = x0.to(device)
        y = torch.as_tensor(data.labels[idx], device=device)
        b = x0.shape[0]
        t = cfg.t_eps + (1.0 - cfg.t_eps) * torch.rand(b, generator=gen, device=device)
        z = torch.randn(x0.shape, generator=gen, device=device)
        drop = torch.rand(b, generator=gen, device=device) < cfg.label_drop
        y = torch.where(drop, torch.full_like(y, data.num_classes), y)
        a = sde.alpha(t)[:, None, None, None]
        s = sde.sigma(t)[:, None, None, None]
        x_t = (a * x0 + s * z).contiguous(memory_format=memory_format)

        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg.lr, cfg.warmup)
        with autocast:
            eps = model(x_t, t, y)
        loss = (eps.float() - z).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        ema.update(model)

        value = loss.item()
        recent.append(value)
        window_loss, window_n = window_loss + value, window_n + 1
        bar.update(1)
        bar.set_postfix(loss=f"{value:.4f}", refresh=False)
        done = step + 1
        if cfg.log_every and done % cfg.log_every == 0:
            rate = window_n / (time.perf_counter() - t0)
            tqdm.write(f"step {done}/{cfg.steps}  loss {window_loss / window_n:.4f}  "
                       f"lr {lr_at(step, cfg.lr, cfg.warmup):.2e}  {rate:.2f} it/s")
            window_loss, window_n, t0 = 0.0, 0, time.perf_counter()
        if cfg.save_every and (done % cfg.save_every == 0 or done == cfg.steps):
            save(resume_path(cfg.out), done, with_state=True)
    bar.close()
    save(cfg.out, cfg.steps, with_state=False)
    tqdm.write(f"saved {cfg.out} (EMA weights, step {cfg.steps}, train loss {_mean(recent):.4f})")
    return cfg.out
