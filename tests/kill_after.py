"""Tests only: `python -m tests.kill_after MODULE ARGS...` runs `python -m MODULE ARGS...` in a
process that SIGKILLs itself after KILL_AFTER_ENV shard commits (CEStore.write_shard calls),
to test resume after a hard kill."""

from __future__ import annotations

import os
import runpy
import signal
import sys

KILL_AFTER_ENV = "CEJOBS_TEST_KILL_AFTER"

if __name__ == "__main__":
    from cejobs.store.store import CEStore

    limit, writes, real = int(os.environ[KILL_AFTER_ENV]), [0], CEStore.write_shard

    def write_then_maybe_die(self, *args, **kwargs):
        seconds = real(self, *args, **kwargs)
        writes[0] += 1
        if writes[0] >= limit:
            os.kill(os.getpid(), signal.SIGKILL)
        return seconds

    CEStore.write_shard = write_then_maybe_die
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
