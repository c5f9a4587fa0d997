"""cejobs: counterfactual-example datasets from a class-conditional diffusion model.

The Python API runs the same code as the CLIs (cejobs.drivers.api):
`cejobs.generate(...)`, `cejobs.open_store(path)`, `cejobs.evaluate(...)`.
"""

from cejobs.threads import openmp_wait_default

openmp_wait_default()  # before any cejobs module loads torch (cejobs/threads.py)

from cejobs.version import __version__  # noqa: E402


def __getattr__(name: str):
    """The API, imported on first use (importing cejobs loads neither torch nor ray).

    `generate` and `evaluate` are the CLI modules themselves, made callable (cejobs.drivers.api)."""
    import importlib

    if name in ("generate", "evaluate"):
        return importlib.import_module(f"cejobs.{name}")
    if name == "open_store":
        return importlib.import_module("cejobs.drivers.api").open_store
    raise AttributeError(f"module 'cejobs' has no attribute {name!r}")


__all__ = ["__version__", "generate", "open_store", "evaluate"]
