"""Shared CLI plumbing: every user error becomes one line on stderr and exit status 2."""

from __future__ import annotations

import sys
from typing import Callable

from cejobs.data import DatasetError
from cejobs.models.checkpoint import CheckpointError
from cejobs.run.store import StoreError
from cejobs.settings import ConfigError

USER_ERRORS = (ConfigError, DatasetError, CheckpointError, StoreError)
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
