"""cejobs: counterfactual-example datasets from a class-conditional diffusion model.

The Python API runs the same code as the CLIs (cejobs.drivers.api):
`cejobs.generate(...)`, `cejobs.open_store(path)`, `cejobs.evaluate(...)`, and
`cejobs.load_model(spec)`: the eps-network of any `--model` (docs/models.md).
"""

from cejobs.threads import passive_openmp_default

passive_openmp_default()  # before any cejobs module loads torch (cejobs/threads.py)

from cejobs.version import __version__  # noqa: E402

API = ("generate", "evaluate", "open_store", "load_model")


def __getattr__(name: str):
    """The API functions, imported on first use (importing cejobs loads neither torch nor
    ray). The command-line modules cejobs/generate.py and cejobs/evaluate.py are only run
    with `python -m`, never imported, so these names stay the functions."""
    if name in API:
        import importlib

        return getattr(importlib.import_module("cejobs.drivers.api"), name)
    raise AttributeError(f"module 'cejobs' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *API])


__all__ = ["__version__", "generate", "open_store", "evaluate", "load_model"]
