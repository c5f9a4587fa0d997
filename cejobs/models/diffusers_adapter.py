"""A diffusers `UNet2DModel` read as cejobs' eps-network eps(x, t, y) (docs/models.md).

A DDPM network trained on the linear schedule beta_i = 1e-4 .. 0.02 over N = 1000 steps is,
in continuous time, the VP SDE with beta_min = 0.1 and beta_max = 20 (Song et al. 2021,
appendix B: beta_i = beta_min / N + i / (N - 1) (beta_max - beta_min) / N), and its step
index is the time label t (N - 1) = 999 t, as score_sde feeds DDPM networks. The class label
goes in as `class_labels`; cejobs' null label is the last class embedding.

diffusers is imported only when such a model is loaded. Weights are read from safetensors
bytes (never a pickle), the config from JSON: nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path
import torch
from torch import Tensor, nn

from cejobs.errors import CheckpointError
from cejobs.models.files import ModelFiles

WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLED_WEIGHTS = "diffusion_pytorch_model.bin"
CONFIG = "config.json"
TIME_SCALE = 999.0  # time label = t (N - 1), N = 1000

# The DDPM training schedule that is exactly cejobs' VP SDE (beta_min 0.1, beta_max 20).
VP_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.0001, "beta_end": 0.02,
               "beta_schedule": "linear", "prediction_type": "epsilon"}
SCHEDULER_OFF = {"trained_betas": None, "rescale_betas_zero_snr": False}


class DiffusersEps(nn.Module):
    """eps(x, t, y) = unet(x, 999 t, class_labels=y).sample; an unconditional network
    (no class embedding) ignores y."""

    def __init__(self, unet: nn.Module, num_classes: int | None, image_shape: tuple[int, ...]):
        super().__init__()
        self.unet = unet
        self.num_classes = num_classes  # classes without the null label; None: unconditional
        self.image_shape = tuple(image_shape)
        self.conditional = unet.config.num_class_embeds is not None

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        labels = y if self.conditional else None
        return self.unet(x, t * TIME_SCALE, class_labels=labels, return_dict=False)[0]


def is_diffusers_folder(path: Path, files: ModelFiles) -> bool:
    """A UNet2DModel folder (config.json naming the class) or a pipeline (model_index.json)."""
    return is_pipeline_folder(path, files) or (
        files.is_file(path / CONFIG) and _class_name(path / CONFIG, files) is not None)


def is_pipeline_folder(path: Path, files: ModelFiles) -> bool:
    return files.is_file(path / "model_index.json")


def _class_name(config: Path, files: ModelFiles) -> str | None:
    try:
        return json.loads(files.read(config)).get("_class_name")
    except (CheckpointError, ValueError, AttributeError):
        return None


def unet_folder(path: Path, files: ModelFiles) -> Path:
    """The UNet2DModel folder of a UNet folder or a pipeline folder."""
    return path / "unet" if is_pipeline_folder(path, files) else path


def model_files(path: Path, files: ModelFiles) -> list[Path]:
    """Every file the network is built from: the UNet's config and weights, and for a pipeline
    its model_index.json and scheduler config. Refuses missing or pickled weights."""
    unet = unet_folder(path, files)
    if not files.is_file(unet / CONFIG):
        raise CheckpointError(f"{path}: a diffusers pipeline folder without unet/{CONFIG}")
    if _class_name(unet / CONFIG, files) != "UNet2DModel":
        raise CheckpointError(f"{unet / CONFIG}: _class_name is "
                              f"{_class_name(unet / CONFIG, files)!r}; cejobs reads diffusers "
                              f"UNet2DModel networks only")
    if not files.is_file(unet / WEIGHTS):
        if files.is_file(unet / PICKLED_WEIGHTS):
            raise CheckpointError(f"{unet}: weights are a pickle ({PICKLED_WEIGHTS}); cejobs "
                                  f"reads safetensors only: re-save with "
                                  f"save_pretrained(..., safe_serialization=True)")
        raise CheckpointError(f"{unet}: weight file {WEIGHTS} missing")
    listed = [unet / CONFIG, unet / WEIGHTS]
    if is_pipeline_folder(path, files):
        scheduler = path / "scheduler" / "scheduler_config.json"
        if not files.is_file(scheduler):
            raise CheckpointError(f"{path}: a diffusers pipeline folder without {scheduler.name} "
                                  f"in scheduler/ (the noise schedule must be known)")
        listed = [path / "model_index.json", scheduler, *listed]
    return listed


def check_scheduler(config: dict, where: str) -> None:
    """Refuse, in one line, a training schedule that is not exactly cejobs' VP SDE."""
    for key, want in {**VP_SCHEDULE, **SCHEDULER_OFF}.items():
        got = config.get(key, SCHEDULER_OFF.get(key))
        if got != want:
            raise CheckpointError(
                f"{where}: {key} = {got!r}; cejobs samples the VP SDE, which is exactly the "
                f"DDPM schedule {', '.join(f'{k}={v!r}' for k, v in VP_SCHEDULE.items())} "
                f"(docs/models.md)")


def check_unet(config: dict, where: str) -> None:
    """Refuse, in one line, a UNet2DModel that is not an eps-network with a plain class table."""
    if config.get("time_embedding_type", "positional") != "positional":
        raise CheckpointError(f"{where}: time_embedding_type {config['time_embedding_type']!r} "
                              f"(a score network's); cejobs reads positional-time eps-networks")
    if config.get("class_embed_type") is not None:
        raise CheckpointError(f"{where}: class_embed_type {config['class_embed_type']!r}; "
                              f"cejobs reads a class table (num_class_embeds) only")
    if config.get("in_channels", 3) != config.get("out_channels", 3):
        raise CheckpointError(f"{where}: out_channels {config.get('out_channels')} != "
                              f"in_channels {config.get('in_channels')}: not an eps-network")


def load_diffusers(path: Path, files: ModelFiles, *,
                   has_null: bool = True) -> tuple[DiffusersEps, dict]:
    """(eps-network, meta) of a UNet2DModel or pipeline folder, read through `files`.
    has_null: the last class embedding is the null label (a single network); False for the
    conditional network of a pair, whose every embedding is a class."""
    try:
        from diffusers import UNet2DModel
        from safetensors.torch import load as load_safetensors
    except ImportError as e:
        raise CheckpointError(f"{path} is a diffusers model; install cejobs[models] "
                              f"(diffusers, safetensors): {e}") from None
    listed = model_files(path, files)
    if is_pipeline_folder(path, files):
        check_scheduler(json.loads(files.read(listed[1])), str(listed[1]))
    unet_dir = unet_folder(path, files)
    config = json.loads(files.read(unet_dir / CONFIG))
    check_unet(config, str(unet_dir / CONFIG))
    try:
        state = load_safetensors(files.read(unet_dir / WEIGHTS))
    except Exception as e:  # noqa: BLE001 - any malformed file: one line
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"{unet_dir / WEIGHTS} is not a safetensors file ({why})") from None
    unet = UNet2DModel.from_config({k: v for k, v in config.items() if not k.startswith("_")})
    missing, unexpected = unet.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{unet_dir}: weights do not fit its config.json ({len(missing)} "
                              f"missing, {len(unexpected)} unexpected, e.g. "
                              f"{(missing or unexpected)[0]})")
    size = config.get("sample_size")
    hw = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
    image_shape = (int(config.get("in_channels", 3)), *map(int, hw))
    embeds = config.get("num_class_embeds")
    num_classes = None if embeds is None else int(embeds) - (1 if has_null else 0)
    net = DiffusersEps(unet.eval(), num_classes, image_shape)
    meta = {"image_shape": list(image_shape), "num_classes": num_classes, "centered": True}
    return net, meta
