"""cejobs: counterfactual-example datasets from a class-conditional diffusion model.

The Python API runs the same code as the CLIs (cejobs.drivers.api):
`cejobs.generate(...)`, `cejobs.open_store(path)`, `cejobs.evaluate(...)`,
`cejobs.load_model(spec)` (the eps-network of any `--model`), `cejobs.load_classifier(spec)`,
and a store's CEs as a torch Dataset, `cejobs.CEDataset(path)` (cejobs.ce_dataset).
"""

from cejobs.threads import openmp_wait_default

openmp_wait_default()  # before any cejobs module loads torch (cejobs/threads.py)

from cejobs.version import __version__  # noqa: E402

API = {"generate": "cejobs.drivers.api", "evaluate": "cejobs.drivers.api",
       "open_store": "cejobs.drivers.api", "load_model": "cejobs.drivers.api",
       "load_classifier": "cejobs.drivers.api", "CEDataset": "cejobs.ce_dataset"}


def __getattr__(name: str):
    """The API functions, imported on first use (importing cejobs loads neither torch nor
    ray). The command-line modules cejobs/generate.py and cejobs/evaluate.py are only run
    with `python -m`, never imported, so these names stay the functions."""
    if name in API:
        import importlib

        return getattr(importlib.import_module(API[name]), name)
    raise AttributeError(f"module 'cejobs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])


__all__ = ["__version__", "generate", "open_store", "evaluate", "load_model", "load_classifier",
           "CEDataset"]
