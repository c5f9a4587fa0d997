"""Run configuration: one dataclass, read from a TOML file and CLI flags (flags win).

Every field is a flag (`--sigma-ce`) and a TOML key (`sigma_ce`). Fields marked `identity`
decide the numbers in the store: a resume must match them exactly (docs/design.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

METHODS = ("gaussian", "boltzmann", "boltzmann-exact", "robust")
BACKENDS = ("local", "ray", "slurm")
PRECISIONS = ("fp32", "bf16")
CE_DTYPES = ("float32", "float16")
BUILTIN_DATASETS = ("digits", "cifar10", "svhn")
SPLITS = ("train", "test")
REPO_DATA = Path(__file__).resolve().parent.parent / "data"


class ConfigError(ValueError):
    """A bad flag, TOML key or value; its message is one line saying how to fix it."""


def _f(default, help: str, *, identity: bool = False, choices=None, flag_type=None):
    meta = {"help": help, "identity": identity, "choices": choices, "type": flag_type}
    return field(default=default, metadata=meta)


@dataclass
class GenerateConfig:
    # --- what to make (identity: recorded in the store, must match on resume)
    dataset: str = _f("digits", "digits | cifar10 | svhn | PATH.npz | store:PATH", identity=True)
    data_root: str | None = _f(None, "folder holding cifar10/svhn files (never downloaded)")
    split: str = _f("train", "dataset split of the sources", identity=True, choices=SPLITS)
    sources: int | None = _f(
        20, "number of sources: the first N of the split (ignored with --indices)", identity=True
    )
    indices: str | None = _f(None, "source index range A:B of the split (overrides --sources)",
                             identity=True)
    method: str = _f("boltzmann", "neighbourhood score, or robust-classifier CEs",
                     identity=True, choices=METHODS)
    w: float = _f(15.0, "classifier-free guidance weight (paper eq. 3)", identity=True)
    sigma_ce: float = _f(0.2, "neighbourhood scale, in model space [-1, 1]", identity=True)
    steps: int = _f(1000, "Euler-Maruyama steps", identity=True)
    per_class: int = _f(2, "CEs per target class per source", identity=True)
    shard_size: int = _f(2, "sources per shard (= zarr chunk along N)", identity=True)
    seed: int = _f(0, "run seed: the noise of each CE depends only on it and the CE's position",
                   identity=True)
    model: str | None = _f(None, "diffusion checkpoint; unset: data/digits/diffusion.pt")
    classifier: str | None = _f(
        None, "classifier checkpoint for --method robust; unset: data/digits/classifier-l2-eps1.0.pt"
    )
    precision: str = _f("fp32", "network precision (SDE state and scores stay fp32)",
                        identity=True, choices=PRECISIONS)
    ce_dtype: str = _f("float32", "dtype of ce/x in the store", identity=True, choices=CE_DTYPES)
    robust_step_size: float = _f(0.05, "robust: L2 length of each gradient step", identity=True)
    robust_max_steps: int = _f(200, "robust: step cap", identity=True)
    robust_threshold: float = _f(0.9, "robust: stop once p_target reaches this", identity=True)
    # --- where and how to run it (may change between a run and its resume)
    store: str | None = _f(None, "zarr store path; unset: runs/<dataset>-<method>.zarr")
    backend: str = _f("ray", "where shards run", choices=BACKENDS)
    device: str = _f("auto", "auto | cpu | cuda | cuda:N")
    batch_size: int = _f(256, "CEs per sampler batch (the network sees twice this); "
                              "evaluate: images per classifier batch")
    compile: bool = _f(False, "torch.compile the diffusion network, or with --fast the "
                              "whole step (2.2x on an H200; falls back to eager if it fails)")
    fast: bool = _f(False, "fast sampling path: channels-last, SDPA attention, noise made on "
                           "the device, no host sync per step; with --compile the whole guided "
                           "step is compiled (CUDA graphs on a GPU); each part falls back when "
                           "it cannot run (docs/performance.md)")
    compile_cache: str | None = _f(None, "folder for torch.compile's kernel cache (--compile, "
                                         "--fast); unset: $TORCHINDUCTOR_CACHE_DIR, else "
                                         "~/.cache/cejobs/inductor")
    workers: int = _f(0, "number of workers (0 = one per GPU, else one per CPU thread group)")
    threads: int = _f(0, "torch threads per worker (0: the CPUs it may use for local and SLURM, 1 per Ray CPU worker)")
    gpus_per_worker: float = _f(1.0, "ray: GPUs per worker (fractions share a GPU)")
    max_retries: int = _f(3, "retries of a shard whose worker died (ray, slurm) "
                              "or that failed (slurm only)")
    max_in_flight: int = _f(0, "ray: shards queued per worker at most (0 = 2)")
    ray_address: str | None = _f(None, "ray cluster address; unset: RAY_ADDRESS, else a local Ray")
    partition: str | None = _f(None, "slurm: partition")
    slurm_gpus: int = _f(1, "slurm: GPUs per array task")
    slurm_cpus: int = _f(4, "slurm: CPUs per array task")
    slurm_mem_gb: int = _f(16, "slurm: memory per array task, GB")
    timeout_min: int = _f(240, "slurm: time limit per array task, minutes")
    array_parallelism: int = _f(64, "slurm: array tasks running at once at most")
    slurm_log_dir: str | None = _f(None, "slurm: folder for submitit logs; unset: <store>.logs")
    progress: bool = _f(True, "show a progress bar")

    # ---------------------------------------------------------------- derived values
    def identity(self) -> dict[str, Any]:
        """The fields that decide the store's numbers (checksums are added by the driver)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.metadata.get("identity")}
        if self.method != "robust":
            for name in ("robust_step_size", "robust_max_steps", "robust_threshold"):
                out.pop(name)
        return out

    def resolved_store(self) -> Path:
        if self.store:
            return Path(self.store)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(self.dataset.removeprefix("store:")).stem)
        return Path("runs") / f"{name}-{self.method}.zarr"

    def resolved_model(self) -> Path:
        return Path(self.model) if self.model else REPO_DATA / "digits" / "diffusion.pt"

    def resolved_classifier(self) -> Path:
        if self.classifier:
            return Path(self.classifier)
        return REPO_DATA / "digits" / "classifier-l2-eps1.0.pt"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    # ---------------------------------------------------------------- validation
    def validate(self) -> None:
        """Raise ConfigError on the first bad value; checks nothing on disk but the dataset name."""
        checks = [
            (self.sigma_ce > 0, f"--sigma-ce must be > 0 (got {self.sigma_ce})"),
            (self.steps >= 1, f"--steps must be >= 1 (got {self.steps})"),
            (self.w >= 0, f"--w must be >= 0 (got {self.w})"),
            (self.per_class >= 1, f"--per-class must be >= 1 (got {self.per_class})"),
            (self.shard_size >= 1, f"--shard-size must be >= 1 (got {self.shard_size})"),
            (self.batch_size >= 1, f"--batch-size must be >= 1 (got {self.batch_size})"),
            (0 <= self.seed < 2**63, f"--seed must be in [0, 2^63) (got {self.seed})"),
            (self.workers >= 0, f"--workers must be >= 0 (got {self.workers})"),
            (self.threads >= 0, f"--threads must be >= 0 (got {self.threads})"),
            (self.max_retries >= 0, f"--max-retries must be >= 0 (got {self.max_retries})"),
            (self.gpus_per_worker > 0, "--gpus-per-worker must be > 0"),
            (self.robust_step_size > 0, "--robust-step-size must be > 0"),
            (self.robust_max_steps >= 1, "--robust-max-steps must be >= 1"),
            (0 < self.robust_threshold < 1, "--robust-threshold must be in (0, 1)"),
            (re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
             f"--device must be auto, cpu, cuda or cuda:N (got {self.device!r})"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        if self.indices is None and (self.sources is None or self.sources < 1):
            raise ConfigError("give --sources N (N >= 1) or --indices A:B")
        if self.indices is not None:
            parse_index_range(self.indices)
        ds = self.dataset
        if not (ds in BUILTIN_DATASETS or ds.endswith(".npz") or ds.startswith("store:")):
            raise ConfigError(
                f"unknown --dataset {ds!r}: use digits, cifar10, svhn, a PATH.npz or store:PATH"
            )
        for name in ("method", "backend", "precision", "ce_dtype", "split"):
            choices = _FIELDS[name].metadata["choices"]
            if getattr(self, name) not in choices:
                raise ConfigError(f"--{_flag(name)} must be one of {', '.join(choices)}"
                                  f" (got {getattr(self, name)!r})")


def parse_index_range(text: str) -> range:
    m = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", text)
    if not m or int(m[1]) >= int(m[2]):
        raise ConfigError(f"--indices must look like A:B with A < B (got {text!r})")
    return range(int(m[1]), int(m[2]))


_FIELDS = {f.name: f for f in dataclasses.fields(GenerateConfig)}


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _field_type(f: dataclasses.Field):
    t = str(f.type)
    if t.startswith("bool"):
        return bool
    if t.startswith("int"):
        return int
    if t.startswith("float"):
        return float
    return str


class ArgParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line and exit status 2."""

    def error(self, message: str):  # one line, exit 2
        self.exit(2, f"error: {message} (see --help)\n")


def add_field_flags(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """Add `--flag` for each GenerateConfig field in `names` (all when None), default shown.

    Defaults are SUPPRESSed in the parsed namespace, so only flags given on the command line
    appear there (and override a TOML file).
    """
    for f in dataclasses.fields(GenerateConfig):
        if names is not None and f.name not in names:
            continue
        kind = _field_type(f)
        kwargs: dict[str, Any] = dict(default=argparse.SUPPRESS, help=f.metadata["help"])
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            if f.metadata["choices"]:
                kwargs["choices"] = f.metadata["choices"]
        kwargs["help"] += f" (default: {f.default})"
        parser.add_argument(f"--{_flag(f.name)}", **kwargs)


def execution_fields() -> list[str]:
    """Fields that say where and how a job runs (backend resources), not what it computes."""
    return [f.name for f in dataclasses.fields(GenerateConfig)
            if not f.metadata.get("identity") and f.name not in _INPUT_FIELDS]


_INPUT_FIELDS = ("data_root", "model", "classifier", "store")


def build_parser(prog: str = "python -m cejobs.generate", description: str | None = None):
    parser = ArgParser(prog=prog, description=description)
    parser.add_argument("--config", default=None,
                        help="TOML file of fields (keys = flag names with underscores); "
                             "flags override it")
    add_field_flags(parser)
    return parser


def load_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config file {path} is not valid TOML: {e}") from None
    for key in data:
        if key not in _FIELDS:
            raise ConfigError(f"unknown key {key!r} in {path}")
    return data


def config_from(values: dict[str, Any]) -> GenerateConfig:
    """A validated config from a dict of field values (unknown keys are errors)."""
    for key in values:
        if key not in _FIELDS:
            raise ConfigError(f"unknown configuration field {key!r}")
    typed = {}
    for key, value in values.items():
        kind = _field_type(_FIELDS[key])
        if value is None or isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            typed[key] = value
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            typed[key] = float(value)
        else:
            raise ConfigError(f"{key} must be {kind.__name__}, got {value!r}")
    config = GenerateConfig(**typed)
    config.validate()
    return config


def parse_generate_args(argv: Sequence[str] | None = None, prog: str = "python -m cejobs.generate"):
    parser = build_parser(prog)
    args = vars(parser.parse_args(argv))
    config_path = args.pop("config", None)
    values = load_toml(config_path) if config_path else {}
    values.update(args)
    if "sources" in args and "indices" not in args:  # a count on the command line wins
        values["indices"] = None
    return config_from(values)
