"""What each `--method` needs and makes: its checkpoint, its store arrays, one batch of CEs.

The diffusion methods (gaussian, boltzmann, boltzmann-exact) sample the augmented score
s_w + s_N (paper eq. 3-5; `sampler.sample_ce`). `robust` is the paper's robust-classifier
baseline (sec. 4; `robust.robust_ce`). Everything that differs between them lives here, so the
generation worker and driver never branch on a method's name.

Torch is imported inside the functions: the table is read by light processes too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cejobs.store.layout import ArraySpec


def _as_is(net, config, device) -> tuple[Any, str]:
    return net, "eager"


@dataclass(frozen=True)
class Method:
    checkpoint: str  # kind of checkpoint it loads: "diffusion" | "classifier"
    make: Callable[..., tuple[Any, dict[str, Any]]]  # one shard's CEs, and its extra arrays
    load: Callable[..., tuple[Any, str]] = _as_is  # (net, config, device) -> what `make` runs
    arrays: dict[str, ArraySpec] = field(default_factory=dict)  # store arrays beyond the common
    identity: tuple[str, ...] = ()  # config fields, beyond the common ones, that decide its CEs

    @property
    def flag(self) -> str:
        """The flag (and config field) naming its checkpoint."""
        return "--model" if self.checkpoint == "diffusion" else "--classifier"

    @property
    def sha256_field(self) -> str:
        """The identity field that records its checkpoint's sha256 in the store."""
        return "model_sha256" if self.checkpoint == "diffusion" else "classifier_sha256"

    def checkpoint_path(self, config) -> Path:
        """The checkpoint of a run (--model or --classifier, else the shipped digits one)."""
        if self.checkpoint == "diffusion":
            return config.resolved_model()
        return config.resolved_classifier()


def _diffusion_load(net, config, device) -> tuple[Any, str]:
    """The network, compiled with --compile; or with --fast the fast sampling path
    (fastpath.py: the same CEs from the same noise)."""
    from cejobs.method.fastpath import FastOptions, FastSampler, use_inductor_cache
    from cejobs.models.compiled import maybe_compile

    if config.compile or config.fast:
        use_inductor_cache(config.compile_cache)
    if not config.fast:
        return maybe_compile(net, config.compile)
    return FastSampler(net, device, seed=config.seed, method=config.method, w=config.w,
                       sigma_ce=config.sigma_ce, steps=config.steps,
                       net_dtype=_net_dtype(config.precision),
                       options=FastOptions(compile=config.compile)), "fast"


def _diffusion_ces(engine, meta: dict, config, mu, src, target, replicate, device):
    """Euler-Maruyama on the augmented score (paper eq. 3-5), noise keyed per CE."""
    import torch

    from cejobs.method.fastpath import FastSampler
    from cejobs.method.noise import CENoise
    from cejobs.method.sampler import sample_ce, to_image_space, to_model_space

    centered = bool(meta.get("centered", True))
    out = []
    for b in _batches(len(mu), config.batch_size):
        mu_b = to_model_space(mu[b], centered).to(device)
        if isinstance(engine, FastSampler):  # the same CEs, same noise (fastpath.py)
            m = engine.sample(mu_b, target[b], src[b], replicate[b])
        else:
            noise = CENoise(config.seed, src[b], target[b], replicate[b])
            m = sample_ce(engine, noise.latents(mu_b), mu_b, target[b].to(device),
                          method=config.method, w=config.w, sigma_ce=config.sigma_ce,
                          steps=config.steps, randn_like=noise,
                          net_dtype=_net_dtype(config.precision))
        out.append(to_image_space(m, centered).cpu())
    return torch.cat(out), {}


def _robust_ces(net, meta: dict, config, mu, src, target, replicate, device):
    """Normalised L2 gradient ascent on log p_target (paper sec. 4); no noise."""
    import torch

    from cejobs.method.robust import robust_ce

    xs, steps, reached = [], [], []
    for b in _batches(len(mu), config.batch_size):
        r = robust_ce(net, mu[b].to(device), target[b].to(device),
                      step_size=config.robust_step_size, max_steps=config.robust_max_steps,
                      threshold=config.robust_threshold)
        xs.append(r.x.cpu())
        steps.append(r.steps.cpu())
        reached.append(r.reached.cpu())
    extras = {"ce/robust_steps": torch.cat(steps), "ce/robust_reached": torch.cat(reached)}
    return torch.cat(xs), extras


def _net_dtype(precision: str):
    """--precision: the network's dtype (the SDE state and the scores stay fp32)."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]


def _batches(total: int, size: int) -> list[slice]:
    return [slice(i, min(i + size, total)) for i in range(0, total, size)]


_DIFFUSION = Method("diffusion", _diffusion_ces, _diffusion_load)
METHODS: dict[str, Method] = {
    "gaussian": _DIFFUSION,
    "boltzmann": _DIFFUSION,
    "boltzmann-exact": _DIFFUSION,
    "robust": Method(
        "classifier", _robust_ces,
        arrays={"ce/robust_steps": ArraySpec(("source", "ce"), "int32", -1),
                "ce/robust_reached": ArraySpec(("source", "ce"), "bool", False)},
        identity=("robust_step_size", "robust_max_steps", "robust_threshold"),
    ),
}
