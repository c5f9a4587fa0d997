"""Training the classifiers the paper evaluates: WideResNet-40-2, standard or L2-PGD adversarially
trained (Madry et al. 2018), with Adam 1e-3 for 100 epochs (paper sec. 4).

Adversarial training replaces each batch by its L2 PGD adversarial examples: 8 steps of size
2.5 eps / 8 (the usual choice, e.g. the `robustness` library), each step along the normalised
gradient of the cross entropy, then projected onto the eps-ball and clipped to [0, 1]; no random
start. Attacks run with the model in eval mode (BatchNorm running statistics, no dropout).
Augmentation: random crop (zero pad 4) and horizontal flip for cifar10, as in the paper; none
for svhn and digits (flips change digits, and a 1-pixel shift of an 8x8 digit is a large move).
At the end it reports clean and PGD test accuracy (8 and 20 steps) and stores them in the
checkpoint's meta["metrics"]. The default radius of that evaluation is the paper's for its
datasets, one radius for every model (tables 1-2: PGD(8, 0.5) on cifar10, PGD(8, 0.2) on svhn,
the eps = 0 model included); elsewhere (digits) the model's own training eps. The PGD step rule
(2.5 eps / steps), the absence of a random start and the extra 20-step attack are our choices:
the paper does not state them. `--threat linf` runs the same PGD in the L-infinity ball
(cejobs.method.attacks) for training and evaluation, which then defaults to the training eps.
`--with-ces STORE` mixes a store's CEs into every batch, standard or adversarial
(cejobs/train/ce_mixing.py).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from cejobs.data import ImageDataset, load_dataset
from cejobs.models import WRN_PRESETS, WideResNet
from cejobs.models.checkpoint import save_checkpoint
from cejobs.method.attacks import THREATS, pgd, pgd_l2  # noqa: F401 - pgd_l2: public name
from cejobs.devices import resolve_device
from cejobs.settings import setting
from cejobs.train.ce_mixing import CE_LABELS, CEMix
from cejobs.train.common import (
    TrainError,
    TrainSettings,
    command_line,
    config_dict,
    epoch_order,
    open_resume,
    resume_path,
    rng_state,
    set_rng_state,
    set_threads,
)

AUGMENTS = ("auto", "none", "crop-flip", "crop")
PAPER_EVAL_EPS = {"cifar10": 0.5, "svhn": 0.2}  # tables 1-2: the PGD(8, eps) column of every model


@dataclass
class ClassifierTrainConfig(TrainSettings):
    preset: str = setting("wrn-40-2", "WideResNet preset; its image shape and classes follow the dataset",
                          choices=tuple(WRN_PRESETS), identity=True)
    dropout: float | None = setting(None, "dropout (default: 0.3 when --eps is 0, else 0)", identity=True, ge=0, lt=1)
    epochs: int = setting(100, "training epochs", ge=1)
    lr: float = setting(1e-3, "Adam learning rate (betas 0.9, 0.999)", identity=True, gt=0)
    eps: float = setting(0.0, "radius of PGD adversarial training, in [0, 1] pixel units (0: standard training)", identity=True, ge=0)
    threat: str = setting("l2", "threat model of PGD training and of the final evaluation: "
                                "l2 | linf", choices=THREATS, identity=True)
    pgd_steps: int = setting(8, "PGD steps of adversarial training", identity=True, ge=1)
    pgd_step_size: float | None = setting(None, "PGD step size (default: 2.5 * eps / pgd_steps)", identity=True)
    augment: str = setting("auto", "auto (crop-flip for cifar10, else none) | none | crop-flip | crop",
                           choices=AUGMENTS, identity=True)
    eval_split: str = setting("test", "split for the final accuracies")
    eval_eps: str | None = setting(None, "comma-separated eps (in --threat) of the final PGD evaluation (default: the "
                                   "paper's 0.5 for cifar10, 0.2 for svhn; else --eps if > 0)")
    eval_steps: str = setting("8,20", "comma-separated PGD step counts of the final evaluation")
    eval_batch_size: int = setting(500, "images per evaluation batch", ge=1)
    precision: str = setting("fp32", "network precision (bf16 autocast on GPUs)", choices=("fp32", "bf16"),
                             identity=True)
    seed: int = setting(0, "seed of the initial weights, data order and augmentation", identity=True)
    out: str = setting("runs/classifier.pt", "output checkpoint; resume state goes to OUT.resume.pt")
    save_every: int = setting(10, "write OUT.resume.pt every this many epochs and at the end (0: never)", ge=0)
    resume: str | None = setting(None, "continue from this resume file (same settings; a larger --epochs extends)")
    with_ces: str | None = setting(None, "mix the CEs of this store (path or URL) into every batch",
                                   identity=True)
    ce_fraction: float = setting(0.25, "with --with-ces: fraction of each batch that is CEs",
                                 identity=True, gt=0, lt=1)
    ce_label: str = setting("target", "with --with-ces: label a CE with its target class or its "
                            "source's label", choices=CE_LABELS, identity=True)

    def identity(self) -> dict:
        """The settings a resume must repeat; the CE ones only when CEs are mixed in, and the
        threat only when it is not L2, so a run with neither has the settings of a resume file
        made before those options existed."""
        settings = super().identity()
        if not self.with_ces:
            for name in ("with_ces", "ce_fraction", "ce_label"):
                settings.pop(name, None)
        if self.threat == "l2":
            settings.pop("threat", None)
        return settings


@torch.no_grad()
def _predict(model: nn.Module, x: Tensor) -> Tensor:
    return model(x).argmax(dim=1)


def accuracy(
    model: nn.Module,
    data: ImageDataset,
    device: torch.device,
    eps: float = 0.0,
    steps: int = 8,
    batch_size: int = 500,
    threat: str = "l2",
) -> float:
    """Accuracy on `data`, clean (eps = 0) or under PGD(steps) at eps in the `threat` model."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data)))
        x = data.images(idx).to(device)
        y = torch.as_tensor(data.labels[idx], device=device)
        if eps > 0:
            x = pgd(model, x, y, eps, steps, threat=threat)
        correct += int((_predict(model, x) == y).sum())
    model.train(was_training)
    return correct / max(len(data), 1)


def _augment(x: Tensor, mode: str, gen: torch.Generator) -> Tensor:
    """Random crop with zero padding 4 (and horizontal flip) per image, drawn from `gen` (CPU)."""
    if mode == "none":
        return x
    b, _, h, w = x.shape
    pad = 4
    padded = F.pad(x, (pad, pad, pad, pad))
    off = torch.randint(0, 2 * pad + 1, (b, 2), generator=gen)
    flip = torch.rand(b, generator=gen) < 0.5
    out = torch.empty_like(x)
    for i in range(b):
        dy, dx = int(off[i, 0]), int(off[i, 1])
        img = padded[i, :, dy:dy + h, dx:dx + w]
        out[i] = img.flip(-1) if mode == "crop-flip" and flip[i] else img
    return out


def _floats(text: str | None, flag: str) -> list[float]:
    if text is None or not text.strip():
        return []
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise TrainError(f"--{flag} must be comma-separated numbers (got {text!r})") from None


def _validate(cfg: ClassifierTrainConfig) -> None:
    """What the fields' ranges and choices (checked when the config is built) do not say."""
    if any(e <= 0 for e in _floats(cfg.eval_eps, "eval-eps")):
        raise TrainError("--eval-eps values must be > 0")
    if any(s < 1 or s != int(s) for s in _floats(cfg.eval_steps, "eval-steps")):
        raise TrainError("--eval-steps values must be integers >= 1")


def default_eval_eps(dataset: str, eps: float, threat: str = "l2") -> list[float]:
    """The radius of the final PGD evaluation without --eval-eps: in L2 the paper's for its
    datasets (the same for every model, eps = 0 included), else the training eps (none at
    eps = 0)."""
    if threat == "l2" and dataset in PAPER_EVAL_EPS:
        return [PAPER_EVAL_EPS[dataset]]
    return [eps] if eps > 0 else []


def channel_stats(data: ImageDataset, chunk: int = 5000) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of a dataset's images (rounded to 4 digits), for the input normalisation."""
    c = data.image_shape[0]
    s1, s2, n = np.zeros(c), np.zeros(c), 0
    for start in range(0, len(data), chunk):
        x = data.images(slice(start, start + chunk)).double()
        s1 += x.sum(dim=(0, 2, 3)).numpy()
        s2 += x.square().sum(dim=(0, 2, 3)).numpy()
        n += x.shape[0] * x.shape[2] * x.shape[3]
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 1e-12))
    return [round(float(m), 4) for m in mean], [round(float(s), 4) for s in std]


def evaluate_classifier(
    model: nn.Module,
    data: ImageDataset,
    device: torch.device,
    eval_eps: list[float],
    eval_steps: list[int],
    batch_size: int = 500,
    threat: str = "l2",
) -> dict:
    """Clean accuracy and PGD accuracies in the `threat` model, as stored in meta["metrics"]."""
    metrics = {"split": data.split, "n": len(data), "clean_acc": accuracy(model, data, device, batch_size=batch_size)}
    attacks = []
    for eps in eval_eps:
        for steps in eval_steps:
            acc = accuracy(model, data, device, eps=eps, steps=steps, batch_size=batch_size,
                           threat=threat)
            attacks.append(dict(attack=f"pgd-{threat}", eps=eps, steps=steps,
                                step_size=2.5 * eps / steps, acc=acc))
    metrics["attacks"] = attacks
    return metrics


def format_metrics(metrics: dict) -> str:
    lines = [f"clean accuracy ({metrics['split']}, n={metrics['n']}): {100 * metrics['clean_acc']:.2f}%"]
    for a in metrics["attacks"]:
        norm = {"pgd-l2": "L2", "pgd-linf": "Linf"}[a["attack"]]
        lines.append(f"{norm} PGD-{a['steps']} eps {a['eps']:g}: {100 * a['acc']:.2f}%")
    return "\n".join(lines)


def train_classifier(cfg: ClassifierTrainConfig, argv: list[str] | None = None) -> str:
    """Train (or resume) a classifier as `cfg` says; returns the output checkpoint path."""
    _validate(cfg)
    set_threads(cfg.threads)
    device = resolve_device(cfg.device)
    train = load_dataset(cfg.dataset, cfg.data_root, "train")
    test = load_dataset(cfg.dataset, cfg.data_root, cfg.eval_split)
    augment = cfg.augment if cfg.augment != "auto" else ("crop-flip" if cfg.dataset == "cifar10" else "none")
    dropout = cfg.dropout if cfg.dropout is not None else (0.3 if cfg.eps == 0 else 0.0)
    mean, std = channel_stats(train)
    kwargs = dict(WRN_PRESETS[cfg.preset])
    kwargs.update(
        num_classes=train.num_classes, in_channels=train.image_shape[0], image_size=train.image_shape[1],
        dropout=dropout, input_mean=tuple(mean), input_std=tuple(std),
    )
    eval_eps = (_floats(cfg.eval_eps, "eval-eps") if cfg.eval_eps is not None
                else default_eval_eps(cfg.dataset, cfg.eps, cfg.threat))
    eval_steps = [int(s) for s in _floats(cfg.eval_steps, "eval-steps")]

    torch.manual_seed(cfg.seed)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = WideResNet(**kwargs).to(device, memory_format=memory_format)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    aug_gen = torch.Generator().manual_seed(cfg.seed)
    start_epoch = 0

    if cfg.resume:
        state, extra = open_resume(cfg, "classifier", device)
        model.load_state_dict(state.model.state_dict())
        opt.load_state_dict(extra["optimizer"])
        set_rng_state(extra["rng"], device, aug_gen)
        start_epoch = extra["epoch"]
        if start_epoch >= cfg.epochs:
            raise TrainError(f"{cfg.resume} is already at epoch {start_epoch}; pass --epochs larger than that to go on")

    def save(path: str, epoch: int, metrics: dict, with_state: bool) -> None:
        meta = dict(
            dataset=cfg.dataset, split="train", eps=cfg.eps, metrics=metrics,
            train=dict(config_dict(cfg), command=command_line(argv), torch=str(torch.__version__), epochs_done=epoch),
        )
        extra = None
        if with_state:
            extra = dict(trainer="classifier", config=cfg.identity(), epoch=epoch, optimizer=opt.state_dict(),
                         rng=rng_state(device, aug_gen))
        save_checkpoint(path, model, kind="classifier", arch="wideresnet", arch_kwargs=kwargs, meta=meta, extra=extra)

    autocast = (
        torch.autocast(device_type=device.type, dtype=torch.bfloat16)
        if cfg.precision == "bf16" else nullcontext()
    )
    mix = None
    if cfg.with_ces:
        mix = CEMix(cfg.with_ces, cfg.ce_fraction, cfg.ce_label, cfg.seed, cfg.batch_size,
                    train.image_shape, train.num_classes)
    real_batch = cfg.batch_size if mix is None else mix.real_batch  # training images per step
    n = len(train)
    steps_per_epoch = math.ceil(n / real_batch)
    n_params = sum(p.numel() for p in model.parameters())
    tqdm.write(
        f"classifier: {cfg.dataset} ({n} train, {len(test)} {cfg.eval_split}), WRN {cfg.preset} "
        f"{n_params / 1e6:.2f}M params, dropout {dropout}, eps {cfg.eps} ({cfg.threat}), augment {augment}, "
        f"epochs {start_epoch}..{cfg.epochs} on {device}"
        + (f", {len(mix)} CEs of {cfg.with_ces} as {cfg.ce_fraction:g} of each batch "
           f"(labelled {cfg.ce_label})" if mix is not None else "")
    )
    bar = tqdm(total=cfg.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
               disable=not cfg.progress, dynamic_ncols=True, desc="classifier")
    for epoch in range(start_epoch, cfg.epochs):
        order = epoch_order(cfg.seed, epoch, n)
        t0, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        model.train()
        for b in range(steps_per_epoch):
            idx = order[b * real_batch:(b + 1) * real_batch]
            x, y = train.images(idx), torch.as_tensor(train.labels[idx])
            if mix is not None:
                x, y = mix.add(x, y, step=epoch * steps_per_epoch + b)
            x = _augment(x, augment, aug_gen).to(device, memory_format=memory_format)
            y = y.to(device)
            if cfg.eps > 0:
                x = pgd(model, x, y, cfg.eps, cfg.pgd_steps, cfg.pgd_step_size, cfg.threat)
            with autocast:
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
        tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}  loss {loss_sum / seen:.4f}  "
                   f"train acc{' (adv)' if cfg.eps > 0 else ''} {100 * correct / seen:.2f}%  "
                   f"{time.perf_counter() - t0:.1f} s")
        done = epoch + 1
        if cfg.save_every and (done % cfg.save_every == 0 or done == cfg.epochs):
            save(resume_path(cfg.out), done, {}, with_state=True)
    bar.close()

    metrics = evaluate_classifier(model, test, device, eval_eps, eval_steps, cfg.eval_batch_size,
                                  cfg.threat)
    save(cfg.out, cfg.epochs, metrics, with_state=False)
    tqdm.write(format_metrics(metrics))
    tqdm.write(f"saved {cfg.out}")
    return cfg.out
