"""Joining a Ray cluster, and saying in one line why an actor or a shard failed."""

from __future__ import annotations

import os
import re
import sys

DASHBOARD_HOST = "127.0.0.1"  # never expose Ray's dashboard beyond this host


def log(message: str) -> None:
    print(f"ray: {message}", file=sys.stderr, flush=True)


def one_line(error: BaseException | str) -> str:
    """The line that says what went wrong: the last `SomeError: ...` line, else the first."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    for line in reversed(lines):
        if re.match(r"^[\w.]*(Error|Exception|Exit|Interrupt)\b", line):
            return line[:500]
    return (lines[0] if lines else type(error).__name__)[:500]


def loss_reason(error: BaseException) -> str:
    """One line on why an actor is gone, classified by Ray's public exception types."""
    from ray import exceptions as rx

    if getattr(error, "preempted", False):
        why = "its node was preempted"
    elif isinstance(error, rx.NodeDiedError):
        why = "its node died"
    elif isinstance(error, rx.OutOfMemoryError):
        why = "killed by Ray's memory monitor"
    elif isinstance(error, rx.ActorUnavailableError):
        why = "unreachable"
    elif getattr(error, "actor_init_failed", False):
        why = "its start-up raised"
    elif isinstance(error, (rx.ActorDiedError, rx.WorkerCrashedError)):
        why = "its process died"
    else:
        return one_line(error)
    actor = getattr(error, "actor_id", None)
    return f"{type(error).__name__} ({why}{f'; actor {actor[:12]}' if actor else ''})"


def connect(address: str | None) -> str:
    """Join the cluster at `address` (else RAY_ADDRESS, as `ray job submit` sets it, else one
    `ray start`ed on this node), or start a private local Ray. Returns what it did.

    ray.init(address=None) makes that choice itself (not address="auto", which joins any Ray
    process it finds on this host). Only a cluster named by an address forwards its workers'
    output into this driver, i.e. into the job's log."""
    import ray

    from cejobs.run.config import ConfigError

    if ray.is_initialized():
        return "connected"
    named = address or os.environ.get("RAY_ADDRESS") or None
    try:
        ray.init(address=address, log_to_driver=named is not None, logging_level="WARNING",
                 include_dashboard=False, dashboard_host=DASHBOARD_HOST)
    except ConnectionError as e:
        raise ConfigError(f"cannot reach the Ray cluster at {named or 'this node'}: "
                          f"{one_line(e)} (check --ray-address / RAY_ADDRESS)") from None
    where = ray.get_runtime_context().gcs_address
    if named:
        return f"joined the cluster at {where}"
    return f"Ray at {where} (this node's `ray start` cluster, else a private local one)"
