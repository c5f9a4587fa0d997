"""Shared CLI plumbing: every user error becomes one line on stderr and exit status 2."""

from __future__ import annotations

import sys
from functools import partial
from typing import Any, Callable

from cejobs.data import DatasetError
from cejobs.models.checkpoint import CheckpointError
from cejobs.errors import StorageError, StoreError
from cejobs.settings import ConfigError

USER_ERRORS = (ConfigError, DatasetError, CheckpointError, StoreError, StorageError)
EXIT_USAGE = 2


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    try:
        code = main(argv)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        code = EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted: finished shards are kept; run the same command to resume",
              file=sys.stderr)
        code = 130
    sys.exit(code)


def command(module: str, parse: Callable, run: Callable[[Any], tuple[Any, int]],
            api: Callable) -> tuple[Callable, Callable]:
    """An entry-point module's `main(argv) -> status` (parse, then run) and its console script;
    the module itself becomes callable as the Python API function `api` (cejobs.drivers.api)."""
    from cejobs.drivers.api import callable_module

    def main(argv: list[str] | None = None) -> int:
        return run(parse(argv))[1]

    callable_module(module, api)
    return main, partial(run_cli, main)
