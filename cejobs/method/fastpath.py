"""The fast sampling path (`--fast`): the same sampler, arranged for the GPU (docs/performance.md).

The method does not change: the same guided score (paper eq. 3), the same neighbourhood
scores (eqs. 4-12), the same Euler-Maruyama step (`sampler.em_step`) and the same per-CE
Philox noise (`noise.ce_normals`), so a CE does not depend on the batch it is made in.
`python -m cejobs.bench sampler --check` measures how close it stays to the fp32 eager sampler.

What changes is how a step is run:
- the whole guided step (doubled-batch forward, scores, update, and the step's noise) is one
  function, compiled once (`torch.compile`), on CUDA with CUDA graphs (`mode="reduce-overhead"`),
  so a step is one graph replay;
- every per-step input (t, alpha_t, sigma_t, beta_t, the Philox step word) is read on the
  device from tables made once per run, and the noise is made on the device: nothing in the
  step loop waits for the host;
- activations are channels-last (cuDNN's and oneDNN's NHWC convolutions), attention goes
  through `F.scaled_dot_product_attention` with d contiguous in that layout, and inductor fuses
  each GroupNorm's normalisation with the SiLU that follows it (and the bf16 cast);
- batches are padded to one size, so one compiled graph serves a whole run.

Each speed knob falls back when it cannot be used (CUDA graphs off the GPU, compile when it
fails) and says so once. The SDE state, the score division by sigma_t and the neighbourhood
scores stay fp32; only the network runs in `net_dtype`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from cejobs.method.noise import ce_normals
from cejobs.method.params import SamplerParams
from cejobs.method.sampler import em_step, guided_eps
from cejobs.method.sde import VPSDE, time_grid
from cejobs.models.unet import AttnBlock


@dataclass(frozen=True)
class FastOptions:
    compile: bool = True  # torch.compile the whole guided step (falls back to eager)
    compile_backend: str | Callable = "inductor"  # "aot_eager": trace, no code generated
    cuda_graphs: bool = True  # on CUDA, mode="reduce-overhead": each step one graph replay
    channels_last: bool = True  # NHWC weights and activations
    sdpa: bool = True  # attention through F.scaled_dot_product_attention
    pad_batches: bool = True  # pad short batches to the first batch's size: one compiled shape
    triton_norm: bool = False  # CUDA: one-pass GroupNorm+SiLU Triton kernel (models/fused.py)


def prepare_net(net: nn.Module, options: FastOptions) -> nn.Module:
    """The network set up for the fast path, in place: channels-last weights, SDPA attention."""
    if options.channels_last:
        net = net.to(memory_format=torch.channels_last)
    if options.sdpa:
        for m in net.modules():
            if isinstance(m, AttnBlock):
                m.sdpa = True
    return net


def guided_step(
    net: nn.Module,
    score_fn: Callable,
    x: Tensor,  # (B, C, H, W) SDE state, fp32
    mu: Tensor,  # (B, C, H, W) sources in model space
    target: Tensor,  # (B,) classes the CEs are guided to
    keys: Tensor,  # (3, B) int64: source index, target, replicate (the CE's Philox counter)
    word: Tensor,  # (1,) int64 Philox step word of this step (i + 1), on the device
    row: Tensor,  # (5,) this step's t, alpha_t, sigma_t, beta_t and dt = -1/N, state dtype
    *,
    seed: int,
    w: float,
    sigma_ce: float,
    null_label: int,
    net_dtype: torch.dtype,
    channels_last: bool,
) -> tuple[Tensor, Tensor]:
    """One step of `sampler.sample_ce`, every input a device tensor: (x, x_mean) after it.

    Nothing here depends on the number of steps, so one compiled graph (and its on-disk cache
    entry) serves every step count of a batch size."""
    t, alpha, sigma, beta, dt = row.unbind()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    eps_w = guided_eps(net, x, t.expand(x.shape[0]), target, w, null_label, net_dtype)
    score = -eps_w / sigma + score_fn(x, mu, alpha, sigma, sigma_ce)
    # the step's noise: counter word i + 1, as noise.CENoise (INIT_STEP = 0 is the latent)
    z = ce_normals(seed, keys[0], keys[1], keys[2], word, x[0].numel(), x.device)
    return em_step(x, score, beta, dt, z.view(x.shape).to(x.dtype))


class FastSampler:
    """`sample(mu, target, source_index, replicate)` = `sampler.sample_ce(..., params)` with
    CENoise(seed), fast. Made once per worker; the step is compiled on the first batch and
    reused."""

    def __init__(
        self,
        net: nn.Module,
        device: torch.device | str,
        params: SamplerParams | None = None,
        *,
        seed: int,  # the run's seed (Philox key)
        sde: VPSDE = VPSDE(),
        null_label: int | None = None,
        options: FastOptions = FastOptions(),
        log: Callable[[str], None] | None = None,  # where the once-only messages go (stderr)
        **changes,  # SamplerParams fields replacing those of `params`, as in sample_ce
    ):
        params = replace(params or SamplerParams(), **changes)
        self.params = params
        self.device = torch.device(device)
        self.options = options
        self.net = prepare_net(net.to(self.device).eval(), options)
        self.steps, self.seed = params.steps, seed
        self.log = log or logging.getLogger(__name__).warning
        self._said: set[str] = set()
        if options.triton_norm:
            self._use_triton_norm()
        steps = params.steps
        grid = time_grid(steps, params.eps)  # float64 on the host; rounded once to fp32
        dt = torch.full_like(grid, -1.0 / steps)  # score_sde's step, not the grid spacing
        self.rows = torch.stack([grid, sde.alpha(grid), sde.sigma(grid), sde.beta(grid), dt],
                                1).to(device=self.device, dtype=torch.float32)
        self.words = torch.arange(1, steps + 1, device=self.device).view(steps, 1)
        self.fixed = dict(
            seed=seed, w=params.w, sigma_ce=params.sigma_ce,
            null_label=net.num_classes if null_label is None else null_label,
            net_dtype=params.net_dtype, channels_last=options.channels_last)
        self.score_fn = params.score_fn
        self.batch: int | None = None
        self.compile_seconds: float | None = None
        self.mode = "eager"
        self._step = self._eager_step
        self._graphs = False
        self._warm = 0
        if options.compile:
            try:
                self._choose_compiled()
            except Exception as e:  # noqa: BLE001 - torch.compile unsupported here
                self._graphs = False
                self._fall_back(e)

    # ---------------------------------------------------------------- modes
    def say_once(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            self.log(message)

    def _use_triton_norm(self) -> None:
        if self.device.type != "cuda":
            self.say_once("fast path: the Triton GroupNorm+SiLU kernel needs CUDA; "
                          "using PyTorch's")
            return
        try:
            from cejobs.models.fused import use_fused_norm_act

            use_fused_norm_act(self.net)
        except Exception as e:  # noqa: BLE001 - no Triton, or it cannot build: PyTorch's
            self.say_once(f"fast path: no Triton GroupNorm+SiLU ({type(e).__name__}: {e}); "
                          f"using PyTorch's")

    def _eager_step(self, *args):
        return guided_step(self.net, self.score_fn, *args, **self.fixed)

    def _choose_compiled(self, graphs: bool | None = None) -> None:
        if graphs is None:
            graphs = self.options.cuda_graphs and self.device.type == "cuda"
            if self.options.cuda_graphs and self.device.type != "cuda":
                self.say_once("fast path: CUDA graphs need a CUDA device; compiling without them")
        mode = "reduce-overhead" if graphs else None
        self._step = torch.compile(self._eager_step, mode=mode, dynamic=False,
                                   backend=self.options.compile_backend)
        self._graphs = graphs
        self.mode = "compiled+cudagraphs" if graphs else "compiled"

    def _fall_back(self, error: Exception) -> None:
        what = f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
        if self._graphs:
            self.say_once(f"fast path: CUDA graphs failed ({what}); compiling without them")
            self._choose_compiled(graphs=False)
        else:
            self.say_once(f"fast path: torch.compile failed ({what}); running the step eager")
            self._step, self.mode = self._eager_step, "eager (compile failed)"

    def _run_step(self, *args):
        """One step; during the first calls (compilation, graph recording) a failure drops to
        the next slower mode and redoes the step (steps are pure functions of their inputs)."""
        if self._graphs:
            torch.compiler.cudagraph_mark_step_begin()
        if self._warm >= 3 or self.mode.startswith("eager"):
            return self._step(*args)
        try:
            t0 = time.perf_counter()
            out = self._step(*args)
            if self._warm == 0 and self.mode != "eager":
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                self.compile_seconds = time.perf_counter() - t0
                self.say_once(f"fast path: {self.mode} step ready in "
                              f"{self.compile_seconds:.1f} s")
            self._warm += 1
            return out
        except Exception as e:  # noqa: BLE001 - any compiler/backend failure falls back
            self._fall_back(e)
            self._warm = 0
            return self._run_step(*args)

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(self, mu: Tensor, target: Tensor, source_index: Tensor, replicate: Tensor) -> Tensor:
        """CEs in model space (the last x_mean), float32 (B, C, H, W), on the device.

        mu: the sources in model space (B, C, H, W); target, source_index, replicate: (B,)
        integers, the CE's identity in the Philox counter (noise.ce_normals).
        """
        b = mu.shape[0]
        if self.batch is None:
            self.batch = b
        pad = self.batch - b if self.options.pad_batches and b < self.batch else 0
        dev = self.device
        keys = torch.stack([torch.as_tensor(v).to(torch.int64).cpu()
                            for v in (source_index, target, replicate)])
        mu = mu.to(dev, torch.float32)
        target = target.to(dev)
        if pad:  # repeat the last CE; its copies are dropped at the end
            keys = torch.cat([keys, keys[:, -1:].expand(3, pad)], 1)
            mu = torch.cat([mu, mu[-1:].expand(pad, *mu.shape[1:])])
            target = torch.cat([target, target[-1:].expand(pad)])
        keys = keys.to(dev)
        # the starting latent x_1: counter word INIT_STEP = 0 (noise.CENoise.latents)
        zero = torch.zeros(1, dtype=torch.int64, device=dev)
        x = ce_normals(self.seed, keys[0], keys[1], keys[2], zero, mu[0].numel(), dev)
        x = x.view(mu.shape)
        if self.options.channels_last:
            mu = mu.contiguous(memory_format=torch.channels_last)
        for i in range(self.steps):
            x, x_mean = self._run_step(x, mu, target, keys, self.words[i], self.rows[i])
            if self._graphs:  # graph outputs are overwritten by the next replay
                x = x.clone()
        return x_mean[:b].contiguous().clone()
