"""Run configuration: typed settings read from a TOML file and CLI flags (flags win).

- `Resources`: where and how shards run (backend, devices, workers, SLURM and Ray limits).
  Shared by generate and evaluate; it may change between a run and its resume.
- `GenerateConfig(Resources)`: what to make. Fields marked `identity` decide the numbers in the
  store: a resume must match them exactly (docs/design.md).
- `EvaluateConfig(Resources)`: which stores and classifiers to evaluate.

Every field is a flag (`--sigma-ce`) and a TOML key (`sigma_ce`); see cejobs.settings.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from cejobs.jobs.methods import METHODS
from cejobs.method.params import (DEFAULT_PRECISION, NET_PRECISIONS, RobustParams,
                                  SamplerParams)
from cejobs.store.location import location
from cejobs.store.storage import Storage
from cejobs.errors import ConfigError
from cejobs.settings import identity_of, invoked_as, parse, setting, typed

PRECISIONS = tuple(NET_PRECISIONS)
CE_DTYPES = ("float32", "float16")
BUILTIN_DATASETS = ("digits", "cifar10", "svhn")
SPLITS = ("train", "test")
BACKENDS = ("local", "ray", "slurm")  # cejobs.backends.BACKENDS has a class for each
REPO_DATA = Path(__file__).resolve().parents[2] / "data"


@dataclass
class Resources:
    """Where and how shards run; the same for generate and evaluate."""

    backend: str = setting("ray", "where shards run", choices=BACKENDS)
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    batch_size: int = setting(256, "CEs per sampler batch (the network sees twice this)", ge=1)
    workers: int = setting(0, "number of workers (0 = one per GPU, else one per CPU thread "
                              "group)", ge=0)
    threads: int = setting(0, "torch threads per worker (0: the CPUs it may use for local and "
                              "SLURM, 1 per Ray CPU worker)", ge=0)
    gpus_per_worker: float = setting(1.0, "ray: GPUs per worker (fractions share a GPU)", gt=0)
    max_retries: int = setting(3, "retries of a shard whose worker was lost (ray: actor or node "
                                  "died; slurm: claim gone stale); a shard that raised is not "
                                  "retried", ge=0)
    shard_timeout: float = setting(0.0, "seconds after which a running shard counts as hung: "
                                        "ray kills its worker and retries it elsewhere, slurm "
                                        "lets another task take over its claim (0: 10 x the "
                                        "median finished shard, at least 120 s)", ge=0)
    max_in_flight: int = setting(0, "ray: shards queued per worker at most (0 = 2)", ge=0)
    ray_address: str | None = setting(None, "ray cluster address; unset: RAY_ADDRESS, else a "
                                            "local Ray")
    partition: str | None = setting(None, "slurm: partition")
    slurm_gpus: int = setting(1, "slurm: GPUs per array task")
    slurm_cpus: int = setting(4, "slurm: CPUs per array task")
    slurm_mem_gb: int = setting(16, "slurm: memory per array task, GB")
    timeout_min: int = setting(240, "slurm: time limit per array task, minutes")
    slurm_max_timeouts: int = setting(1000, "slurm: requeues of an array task after a time-out "
                                            "or preemption at most (SLURM_RESTART_COUNT counts "
                                            "them)", ge=0)
    array_parallelism: int = setting(64, "slurm: array tasks running at once at most")
    slurm_log_dir: str | None = setting(None, "slurm: folder for submitit logs; unset: "
                                              "<store>.logs")
    progress: bool = setting(True, "show a progress bar")

    FLAG_GROUPS = {  # --help headings (cejobs.settings.add_flags)
        "resources": ("backend", "device", "batch_size", "workers", "threads", "max_retries",
                      "shard_timeout", "progress"),
        "Ray": ("gpus_per_worker", "max_in_flight", "ray_address"),
        "SLURM": ("partition", "slurm_gpus", "slurm_cpus", "slurm_mem_gb", "timeout_min",
                  "slurm_max_timeouts", "array_parallelism", "slurm_log_dir"),
    }

    def validate(self) -> None:
        """Raise ConfigError on the first bad value."""
        if re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is None:
            raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N (got {self.device!r})")


@dataclass
class GenerateConfig(Resources):
    # --- what to make (identity: recorded in the store, must match on resume)
    dataset: str = setting("digits", "digits | cifar10 | svhn | PATH.npz | store:PATH | "
                                      "imagefolder:PATH (a folder per class)", identity=True)
    data_root: str | None = setting(None, "folder holding cifar10/svhn files (never downloaded)")
    split: str = setting("train", "dataset split of the sources", identity=True, choices=SPLITS)
    sources: int | None = setting(
        20, "number of sources: the first N of the split (ignored with --indices)", identity=True
    )
    indices: str | None = setting(None, "source index range A:B of the split (overrides --sources)",
                                  identity=True)
    method: str = setting(SamplerParams.method, "neighbourhood score, or robust-classifier CEs",
                          identity=True, choices=tuple(METHODS))
    w: float = setting(SamplerParams.w, "classifier-free guidance weight (paper eq. 3)",
                      identity=True, ge=0)
    sigma_ce: float = setting(SamplerParams.sigma_ce,
                              "neighbourhood scale, in model space [-1, 1]", identity=True, gt=0)
    steps: int = setting(SamplerParams.steps, "Euler-Maruyama steps", identity=True, ge=1,
                         le=100_000)
    per_class: int = setting(2, "CEs per target class per source", identity=True, ge=1,
                             le=10_000)
    shard_size: int = setting(2, "sources per shard (= zarr chunk along N)", identity=True, ge=1)
    seed: int = setting(0, "run seed: the noise of each CE depends only on it and the CE's "
                           "position", identity=True)
    model: str | None = setting(None, "diffusion model: a cejobs checkpoint, a diffusers "
                                      "UNet2DModel or pipeline folder, a converted EDM folder, "
                                      "or py:package.module:factory (docs/models.md); unset: "
                                      "data/digits/diffusion.pt")
    uncond_model: str | None = setting(None, "unconditional network guiding a --model that has "
                                             "no null label (classifier-free guidance combines "
                                             "the two); any kind --model takes")
    resize: int | None = setting(None, "imagefolder: resize every image to N x N (bilinear); "
                                       "unset: images must have the model's size", ge=1)
    classifier: str | None = setting(
        None, "classifier for --method robust: a checkpoint, or torchvision:ARCH@WEIGHTS, "
              "timm:ARCH@WEIGHTS, robustbench:NAME@MODEL_DIR (docs/models.md); unset: "
              "data/digits/classifier-l2-eps1.0.pt"
    )
    precision: str = setting(DEFAULT_PRECISION,
                             "network precision (SDE state and scores stay fp32)",
                             identity=True, choices=PRECISIONS)
    ce_dtype: str = setting("float32", "dtype of ce/x in the store", identity=True,
                            choices=CE_DTYPES)
    robust_step_size: float = setting(RobustParams.step_size,
                                      "robust: L2 length of each gradient step",
                                      identity=True, gt=0)
    robust_max_steps: int = setting(RobustParams.max_steps, "robust: step cap", identity=True,
                                     ge=1, le=1_000_000)
    robust_threshold: float = setting(RobustParams.threshold,
                                      "robust: stop once p_target reaches this",
                                      identity=True, gt=0, lt=1)
    # --- inputs (may move between a run and its resume)
    store: str | None = setting(None, "zarr store: a path, or s3://bucket/prefix/run.zarr (any "
                                      "fsspec URL; credentials from the AWS environment); unset: "
                                      "runs/<dataset>-<method>.zarr")
    compile: bool = setting(False, "torch.compile the diffusion network, or with --fast the "
                                   "whole step (2.2x on an H200; falls back to eager if it fails)")
    fast: bool = setting(False, "fast sampling path: channels-last, SDPA attention, noise made "
                                "on the device, no host sync per step; with --compile the whole "
                                "guided step is compiled (CUDA graphs on a GPU); each part falls "
                                "back when it cannot run (docs/performance.md)")
    compile_cache: str | None = setting(None, "folder for torch.compile's kernel cache (--compile, "
                                              "--fast); unset: $TORCHINDUCTOR_CACHE_DIR, else "
                                              "~/.cache/cejobs/inductor")

    FLAG_GROUPS = {
        "what to make": ("dataset", "data_root", "resize", "split", "sources", "indices",
                         "method", "per_class", "seed"),
        "sampler": ("w", "sigma_ce", "steps", "model", "uncond_model", "classifier",
                    "precision", "compile", "fast", "compile_cache", "robust_step_size",
                    "robust_max_steps", "robust_threshold"),
        "store": ("store", "shard_size", "ce_dtype"),
        **Resources.FLAG_GROUPS,
    }

    # ---------------------------------------------------------------- derived values
    def identity(self) -> dict[str, Any]:
        """The fields that decide the store's numbers (checksums are added by the driver):
        the common ones, and those of its method (cejobs.jobs.methods)."""
        own = set(METHODS[self.method].identity)
        every_method = {name for m in METHODS.values() for name in m.identity}
        return {k: v for k, v in identity_of(self).items() if k not in every_method - own}

    def resolved_store(self) -> Storage:
        if self.store:
            return location(self.store)  # a path, file:// or an object-storage URL
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(self.dataset.removeprefix("store:")).stem)
        return location(Path("runs") / f"{name}-{self.method}.zarr")

    def resolved_model(self) -> Path:
        return Path(self.model) if self.model else REPO_DATA / "digits" / "diffusion.pt"

    def resolved_classifier(self) -> Path:
        if self.classifier:
            return Path(self.classifier)
        return REPO_DATA / "digits" / "classifier-l2-eps1.0.pt"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def command_line_wins(values: dict[str, Any], flags: dict[str, Any]) -> None:
        """A --sources count on the command line wins over a TOML `indices`."""
        if "sources" in flags and "indices" not in flags:
            values["indices"] = None

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ConfigError on the first bad value; checks nothing on disk but the dataset name."""
        if not 0 <= self.seed < 2**63:
            raise ConfigError(f"--seed must be in [0, 2^63) (got {self.seed})")
        super().validate()
        if self.indices is None and (self.sources is None or self.sources < 1):
            raise ConfigError("give --sources N (N >= 1) or --indices A:B")
        if self.indices is not None:
            parse_index_range(self.indices)
        check_slurm_store(self.backend, [self.store] if self.store else [])
        ds = self.dataset
        if not (ds in BUILTIN_DATASETS or ds.endswith(".npz")
                or ds.startswith(("store:", "imagefolder:"))):
            raise ConfigError(
                f"unknown --dataset {ds!r}: use digits, cifar10, svhn, a PATH.npz, store:PATH "
                f"or imagefolder:PATH"
            )
        if self.resize is not None and not ds.startswith("imagefolder:"):
            raise ConfigError("--resize applies to --dataset imagefolder:PATH only")
        if self.uncond_model and METHODS[self.method].checkpoint != "diffusion":
            raise ConfigError(f"--uncond-model needs a diffusion method, not --method "
                              f"{self.method}")


@dataclass
class EvaluateConfig(Resources):
    """Stores and classifiers to evaluate, and where the tables and figures go."""

    store: list[str] = setting([], "a store made by generate; repeat to compare stores (their "
                                   "labels are the folder names without .zarr)")
    classifier: list[str] = setting([], "NAME=CKPT or NAME=SPEC (torchvision:, timm:, "
                                        "robustbench:; docs/models.md), a classifier and its "
                                        "name; repeat for several (none: "
                                        "data/digits/classifier-*.pt, named by file stem "
                                        "without 'classifier-', for digits stores)")
    out: str | None = setting(None, "output folder; unset: the first store's path with .zarr "
                                    "replaced by .eval")
    allow_partial: bool = setting(False, "evaluate only the finished shards of unfinished stores; "
                                         "the report says which part was evaluated")
    figures: bool = setting(True, "draw figures/*.png")
    backend: str = setting("local", "where shards run; one process is enough for small stores",
                           choices=BACKENDS)
    batch_size: int = setting(Resources.batch_size, "images per classifier batch", ge=1)

    FLAG_GROUPS = {
        "what to evaluate": ("store", "classifier", "out", "allow_partial", "figures"),
        **Resources.FLAG_GROUPS,
    }

    def validate(self) -> None:
        super().validate()
        if not self.store:
            raise ConfigError("give at least one --store PATH")
        check_slurm_store(self.backend, self.store)


SLURM_STORES = ("the slurm backend needs the store on a filesystem every node mounts (a path "
                "or file://); s3:// and other object-storage stores run on the local and ray "
                "backends")


def check_slurm_store(backend: str, stores: Sequence[str | Storage]) -> None:
    """SLURM's claim loop takes shards with hard links and renames on a shared filesystem;
    object storage is refused before any work (docs/store.md)."""
    if backend == "slurm" and not all(location(s).shares_links for s in stores):
        raise ConfigError(SLURM_STORES)


def parse_index_range(text: str) -> range:
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not m or int(m[1]) >= int(m[2]):
        raise ConfigError(f"--indices must look like A:B with A < B (got {text!r})")
    return range(int(m[1]), int(m[2]))


GENERATE_DESCRIPTION = (
    "Make counterfactual examples: for each source image and each target class, --per-class "
    "CEs from the class-conditional diffusion model guided towards the target and held near "
    "the source (--method), written shard by shard into a checksummed zarr store (--store). "
    "Re-running the same command resumes the store; cejobs.evaluate scores it.")
EVALUATE_DESCRIPTION = (
    "Run classifiers over CE stores (writing eval/<name>/ into each store, sharded and "
    "resumable), then write summary.json, tables/*.csv, report.md and figures/*.png.")


def parse_generate_args(argv: Sequence[str] | None = None,
                        prog: str | None = None) -> GenerateConfig:
    return parse(GenerateConfig, argv, prog or invoked_as("cejobs.generate"),
                 GENERATE_DESCRIPTION)


def parse_evaluate_args(argv: Sequence[str] | None = None,
                        prog: str | None = None) -> EvaluateConfig:
    return parse(EvaluateConfig, argv, prog or invoked_as("cejobs.evaluate"),
                 EVALUATE_DESCRIPTION)
