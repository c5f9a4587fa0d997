"""torch.compile as a speed knob with a safe fallback (k-diffusion `compile_wrap`, nanoGPT)."""

from __future__ import annotations

import logging

import torch
from torch import nn

from cejobs.models.pair import EpsPair


def maybe_compile(net: nn.Module, enabled: bool) -> tuple[nn.Module, str]:
    """(net, mode): torch.compile(net) when enabled and it works, else eager, said once.

    Compilation errors surface on the first call, so the compiled net is tried once on a
    two-image batch here; any failure falls back to the eager net.
    """
    if not enabled:
        return net, "eager"
    if isinstance(net, EpsPair):  # the sampler calls the members (method/sampler.guided_eps)
        cond, mode = maybe_compile(net.cond, True)
        uncond, mode_uncond = maybe_compile(net.uncond, True)
        both = EpsPair(cond, uncond, net.num_classes, net.image_shape)
        return both, mode if mode == mode_uncond else f"{mode} + {mode_uncond}"
    try:
        compiled = torch.compile(net)
        device = next(net.parameters()).device
        with torch.no_grad():
            x = torch.zeros(2, *net.image_shape, device=device)
            compiled(x, torch.full((2,), 0.5, device=device),
                     torch.zeros(2, dtype=torch.long, device=device))
        return compiled, "compiled"
    except Exception as e:  # noqa: BLE001 - any compiler/backend failure falls back
        logging.getLogger(__name__).warning(
            f"torch.compile failed ({type(e).__name__}: {str(e).splitlines()[0][:120]}); "
            f"running eager")
        return net, "eager (compile failed)"
