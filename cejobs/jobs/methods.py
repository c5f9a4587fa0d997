"""What each `--method` needs and makes: its checkpoint, its store arrays, and the engine that
makes a batch of its CEs.

The diffusion methods (gaussian, boltzmann, boltzmann-exact) sample the augmented score
s_w + s_N (paper eq. 3-5; `sampler.sample_ce`). `robust` is the paper's robust-classifier
baseline (sec. 4; `robust.robust_ce`). Everything that differs between them lives here and in
`engines.py`, so the CE maker, the generation worker and the driver never branch on a method's
name. `CEParams` holds every parameter of how a run's CEs are made, read once from its config.

Torch is imported inside the functions: the table is read by light processes too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from cejobs.method.params import RobustParams, SamplerParams, net_dtype_of
from cejobs.store.layout import ArraySpec

if TYPE_CHECKING:
    import torch
    from torch import nn

    from cejobs.jobs.config import GenerateConfig
    from cejobs.jobs.engines import Engine


@dataclass(frozen=True)
class CEParams:
    """How the CEs of a run are made: its method's parameters and the engine's options."""

    method: str  # --method: a key of METHODS
    seed: int  # the run's seed: a CE's noise depends on it and the CE's identity only
    batch_size: int  # CEs per sampler (or classifier) batch
    sampler: SamplerParams | None = None  # the diffusion methods' parameters
    robust: RobustParams | None = None  # robust's parameters
    fast: bool = False  # the fast sampling path (method/fastpath.py)
    compile: bool = False  # torch.compile the network, or with `fast` the whole step
    compile_cache: str | None = None  # inductor's kernel folder (devices.use_inductor_cache)

    @classmethod
    def from_config(cls, config: GenerateConfig) -> CEParams:
        """The parameters of a run; only its own method's (sampler or robust) are set."""
        diffusion = METHODS[config.method].checkpoint == "diffusion"
        sampler = SamplerParams(method=config.method, w=config.w, sigma_ce=config.sigma_ce,
                                steps=config.steps, net_dtype=net_dtype_of(config.precision))
        robust = RobustParams(step_size=config.robust_step_size,
                              max_steps=config.robust_max_steps,
                              threshold=config.robust_threshold)
        return cls(method=config.method, seed=config.seed, batch_size=config.batch_size,
                   sampler=sampler if diffusion else None, robust=None if diffusion else robust,
                   fast=config.fast, compile=config.compile, compile_cache=config.compile_cache)


Loader = Callable[["nn.Module", dict, CEParams, "torch.device"], "Engine"]


@dataclass(frozen=True)
class Method:
    checkpoint: str  # kind of checkpoint it loads: "diffusion" | "classifier"
    load: Loader  # (net, checkpoint meta, params, device) -> the engine that makes its CEs
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

    def checkpoint_path(self, config, must_exist: bool = True) -> Path:
        """The checkpoint of a run (--model or --classifier, else the shipped digits one); for
        a library classifier (cejobs.models.classifiers), its weights file."""
        if self.checkpoint == "diffusion":
            return config.resolved_model()
        from cejobs.models.classifiers import classifier_file

        return classifier_file(classifier_spec(config), must_exist)

    def model_files(self, config) -> list[Path]:
        """Driver: every file its network is built from (--model, --uncond-model: any kind of
        models/spec.py; --classifier: its checkpoint or weights file), checked to exist."""
        if self.checkpoint == "diffusion":
            from cejobs.models.spec import model_files

            return model_files(str(config.resolved_model()), config.uncond_model)
        return [self.checkpoint_path(config)]

    def load_network(self, config, image_shape, num_classes: int,
                     data: dict[str, bytes] | None = None):
        """Its network with `.model`, `.meta` and `.sha256`, from disk or from `data` (the
        files' bytes read by the driver: jobs/worker_inputs.py). Library classifiers take the
        dataset's `image_shape` and `num_classes`."""
        if self.checkpoint == "diffusion":
            from cejobs.models.spec import load_model

            return load_model(str(config.resolved_model()), config.uncond_model, data=data)
        from cejobs.models.classifiers import load_classifier

        path = self.checkpoint_path(config, must_exist=data is None)
        return load_classifier(classifier_spec(config), tuple(image_shape), num_classes,
                               data=data.get(str(path)) if data else None, path=Path(path))

    def checksums(self, loaded) -> dict:
        """The identity fields of its loaded network: the sha256, and for a diffusion model
        that is not a cejobs checkpoint its kind and the sha256 of every file it came from."""
        fields = {self.sha256_field: loaded.sha256}
        kind = loaded.meta.get("kind", "cejobs") if self.checkpoint == "diffusion" else "cejobs"
        if kind != "cejobs":
            fields.update(model_kind=kind, model_files=dict(loaded.meta["files"]))
        return fields


def _load_diffusion(net, meta: dict, params: CEParams, device) -> Engine:
    """The sampler on the network, compiled with --compile; or with --fast the fast sampling
    path (fastpath.py: the same CEs from the same noise)."""
    from cejobs.devices import use_inductor_cache
    from cejobs.jobs.engines import FastEngine, SamplerEngine
    from cejobs.method.fastpath import FastOptions, FastSampler
    from cejobs.models.compiled import maybe_compile

    centered = bool(meta.get("centered", True))
    if params.compile or params.fast:
        use_inductor_cache(params.compile_cache)
    if params.fast:
        fast = FastSampler(net, device, params.sampler, seed=params.seed,
                           options=FastOptions(compile=params.compile))
        return FastEngine(fast, centered)
    net, mode = maybe_compile(net, params.compile)
    return SamplerEngine(net, params.sampler, params.seed, device, centered, mode)


def _load_robust(net, meta: dict, params: CEParams, device) -> Engine:
    from cejobs.jobs.engines import RobustEngine

    return RobustEngine(net, params.robust, device)


_DIFFUSION = Method("diffusion", _load_diffusion)
METHODS: dict[str, Method] = {
    "gaussian": _DIFFUSION,
    "boltzmann": _DIFFUSION,
    "boltzmann-exact": _DIFFUSION,
    "robust": Method(
        "classifier", _load_robust,
        arrays={"ce/robust_steps": ArraySpec(("source", "ce"), "int32", -1),
                "ce/robust_reached": ArraySpec(("source", "ce"), "bool", False)},
        identity=("robust_step_size", "robust_max_steps", "robust_threshold"),
    ),
}


def classifier_spec(config) -> str:
    """--classifier as given (a checkpoint path or a library spec), else the shipped one."""
    return str(config.classifier) if config.classifier else str(config.resolved_classifier())
