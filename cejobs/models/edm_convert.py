"""Convert an EDM network pickle into a folder cejobs loads without unpickling.

EDM (NVlabs/edm) publishes its networks as pickles whose classes live in EDM's own code
(`training.networks`, `torch_utils.persistence`); unpickling one runs code, so this is the one
place in cejobs that unpickles, on the user's explicit request (`trust_pickle`), once. The
result is `edm.json` (VPPrecond's constructor arguments) and `model.safetensors` (its
state_dict), read by `cejobs.models.edm.load_edm`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from cejobs.errors import CheckpointError, ConfigError
from cejobs.models.edm import write_edm_folder

EDM_MODULES = ("torch_utils", "dnnlib")


def network_from_pickle(data: object) -> object:
    """The network in an unpickled EDM file: its 'ema' entry (EDM's training snapshots and
    published networks), or the object itself."""
    return data.get("ema") if isinstance(data, dict) else data


def convert_edm_pickle(pickle_path: Path, out: Path, *, trust_pickle: bool) -> dict:
    """Write `out`/edm.json and `out`/model.safetensors from EDM's `pickle_path`; returns the
    constructor arguments. Only `VPPrecond` around `SongUNet` (DDPM++) is accepted."""
    import pickle

    if not trust_pickle:
        raise ConfigError(
            "converting an EDM pickle runs the code inside it: pass --trust-pickle if you trust "
            f"{pickle_path}")
    missing = [name for name in EDM_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(
            f"EDM's code is not importable (no {', '.join(missing)}): put a checkout of "
            "https://github.com/NVlabs/edm on PYTHONPATH")
    try:
        with open(pickle_path, "rb") as f:
            data = pickle.load(f)  # noqa: S301 -- the user acknowledged it (trust_pickle)
    except OSError as e:
        raise CheckpointError(f"{pickle_path}: cannot read ({e.strerror or e})") from e
    except (pickle.UnpicklingError, EOFError, AttributeError, ModuleNotFoundError) as e:
        raise CheckpointError(f"{pickle_path}: not an EDM network pickle ({e})") from e
    net = network_from_pickle(data)
    kind = type(net).__name__
    inner = type(getattr(net, "model", None)).__name__
    if kind != "VPPrecond" or inner != "SongUNet":
        raise CheckpointError(
            f"{pickle_path}: holds {kind} around {inner}; cejobs converts EDM's VP networks "
            "only (VPPrecond around SongUNet)")
    init_kwargs = dict(getattr(net, "init_kwargs", {}))
    if not init_kwargs:
        raise CheckpointError(f"{pickle_path}: the network carries no constructor arguments")
    write_edm_folder(out, init_kwargs, net.state_dict())
    return init_kwargs
