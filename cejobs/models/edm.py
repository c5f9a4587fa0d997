"""EDM's VP networks as eps-networks of cejobs' VP SDE, read from a converted folder.

A folder holds `edm.json` (format, EDM's `VPPrecond` constructor arguments) and
`model.safetensors` (its state_dict), as written by `python -m cejobs.models convert edm`
(`cejobs.models.edm_convert`); nothing here unpickles. The network is cejobs' own
implementation (`cejobs.models.edm_unet`); docs/models.md, "EDM networks", has the mapping.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from cejobs.errors import CheckpointError
from cejobs.models.checkpoint import file_sha256
from cejobs.models.edm_unet import VPPrecond

FORMAT = "cejobs-edm-v1"
CONFIG_FILE = "edm.json"
WEIGHTS_FILE = "model.safetensors"


class EDMEps(nn.Module):
    """eps(x_t, t, y) of cejobs' VP SDE from EDM's VP denoiser D (Karras et al. 2022, Table 1).

    cejobs' VP SDE (cejobs/method/sde.py, docs/math.md) has x_t = alpha(t) x_0 + s(t) z with
        log alpha(t) = -t^2 (beta_max - beta_min) / 4 - t beta_min / 2,  s(t) = sqrt(1 - alpha^2).
    EDM's VP schedule writes x_t = alpha(t) (x_0 + sigma(t) z) with
        sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1),  alpha(t) = 1 / sqrt(1 + sigma^2),
    so log alpha(t) = -(beta_d t^2 / 2 + beta_min t) / 2: the same function as cejobs' when
    beta_d = beta_max - beta_min (EDM's 19.9 = 20 - 0.1, beta_min 0.1 in both), and then
    sigma(t) = s(t) / alpha(t). Hence x_hat = x_t / alpha(t) = x_0 + sigma(t) z is EDM's noisy
    input at noise level sigma(t), D(x_hat; sigma) estimates E[x_0 | x_hat], and the noise
    estimate is
        eps = (x_hat - D(x_hat; sigma(t), y)) / sigma(t).
    With VPPrecond's c_skip = 1, c_out = -sigma, D = x_hat - sigma F(c_in x_hat, c_noise), so
    eps = F(c_in x_hat, c_noise) exactly, where c_in = 1 / sqrt(1 + sigma(t)^2) = alpha(t), so
    c_in x_hat = x_t, and c_noise = (M - 1) sigma_inv(sigma(t)) = (M - 1) t. This module
    computes eps = F(x_t, (M - 1) t, y): the formula above without its cancellation
    (x_hat - D loses digits as sigma -> 0) and without the round trip through sigma.

    Labels: cejobs' y are integers, y = num_classes being the null label; EDM's class labels
    are one-hot rows, zeros meaning no class (EDM's default for a conditional network). So y
    maps to the one-hot row of y, and the null label to zeros. An unconditional network
    (label_dim 0) has num_classes 0 and ignores y.
    """

    def __init__(self, precond: VPPrecond):
        super().__init__()
        self.precond = precond
        self.num_classes = precond.label_dim
        self.image_shape = (precond.img_channels, precond.img_resolution, precond.img_resolution)

    def class_labels(self, y: Tensor, dtype: torch.dtype) -> Tensor | None:
        """One-hot rows for y in 0..num_classes-1, zeros for the null label num_classes."""
        if not self.num_classes:
            return None
        rows = torch.eye(self.num_classes + 1, self.num_classes, dtype=dtype, device=y.device)
        return rows[y.long()]

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        dtype = self.precond.model.map_layer0.weight.dtype
        noise_labels = (self.precond.M - 1) * t.to(dtype).reshape(-1).expand(x.shape[0])
        out = self.precond.model(x.to(dtype), noise_labels, self.class_labels(y, dtype))
        return out.to(x.dtype)


def is_edm_folder(path: Path) -> bool:
    """A folder with `edm.json` and `model.safetensors` (a converted EDM network)."""
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def read_edm_config(path: Path) -> dict:
    """VPPrecond's constructor arguments from `edm.json`, checked."""
    config_path = Path(path) / CONFIG_FILE
    try:
        config = json.loads(config_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{config_path}: not a readable JSON file ({e})") from e
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise CheckpointError(f"{config_path}: not an EDM network config (format {FORMAT!r})")
    if config.get("class") != "VPPrecond":
        raise CheckpointError(
            f"{config_path}: class {config.get('class')!r} is not supported (only VPPrecond)")
    kwargs = config.get("init_kwargs")
    if not isinstance(kwargs, dict):
        raise CheckpointError(f"{config_path}: init_kwargs missing")
    return kwargs


def build_precond(init_kwargs: dict, state_dict: dict[str, Tensor], where: str) -> VPPrecond:
    """cejobs' VPPrecond with EDM's constructor arguments and weights (strict), eval mode."""
    try:
        precond = VPPrecond(**init_kwargs)
    except TypeError as e:
        raise CheckpointError(f"{where}: bad VPPrecond arguments ({e})") from e
    except CheckpointError as e:
        raise CheckpointError(f"{where}: {e}") from e
    expected = precond.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong_shape = sorted(k for k in set(expected) & set(state_dict)
                         if expected[k].shape != state_dict[k].shape)
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"{where}: weights do not fit the network (missing {missing[:3]}, unexpected "
            f"{unexpected[:3]}, other shape {wrong_shape[:3]})")
    precond.load_state_dict(state_dict)
    return precond.eval()


def load_edm(path: Path) -> tuple[nn.Module, dict]:
    """(eps-network in eval mode, metadata) from a converted EDM folder.

    metadata: kind "edm", image_shape (C, H, W), num_classes (label_dim; 0 unconditional),
    label_dropout (0: the network never saw the null label; pair it with an unconditional
    one for guidance), centered True (EDM's data lie in [-1, 1]), sha256 {file name: hex}.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not is_edm_folder(path):
        raise CheckpointError(f"{path}: not an EDM network folder ({CONFIG_FILE} and "
                              f"{WEIGHTS_FILE}; make one with python -m cejobs.models convert edm)")
    init_kwargs = read_edm_config(path)
    weights_path = path / WEIGHTS_FILE
    try:
        state_dict = load_file(weights_path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{weights_path}: not a safetensors file ({e})") from e
    eps = EDMEps(build_precond(init_kwargs, state_dict, str(path))).eval()
    meta = {
        "kind": "edm",
        "image_shape": eps.image_shape,
        "num_classes": eps.num_classes,
        "label_dropout": float(init_kwargs.get("label_dropout", 0)),
        "centered": True,
        "sha256": {name: file_sha256(path / name) for name in (CONFIG_FILE, WEIGHTS_FILE)},
    }
    return eps, meta


def write_edm_folder(out: Path, init_kwargs: dict, state_dict: dict[str, Tensor]) -> None:
    """Write `edm.json` and `model.safetensors` into `out` (created; must hold neither file).
    The arguments are checked by building the network and loading the weights first."""
    from safetensors.torch import save_file

    out = Path(out)
    build_precond(init_kwargs, state_dict, str(out))
    if (out / CONFIG_FILE).exists() or (out / WEIGHTS_FILE).exists():
        raise CheckpointError(f"{out}: already holds an EDM network; choose an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    config = {"format": FORMAT, "class": "VPPrecond", "init_kwargs": init_kwargs}
    config_partial = out / f".{CONFIG_FILE}.partial"
    weights_partial = out / f".{WEIGHTS_FILE}.partial"
    config_partial.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(weights_partial))
    # safetensors writes 0600; give the weights the mode the umask gave the config
    os.chmod(weights_partial, config_partial.stat().st_mode & 0o777)
    os.replace(weights_partial, out / WEIGHTS_FILE)
    os.replace(config_partial, out / CONFIG_FILE)  # last: the folder is complete
