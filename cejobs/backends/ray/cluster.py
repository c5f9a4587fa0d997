"""Joining a Ray cluster, and saying in one line why an actor or a shard failed."""

from __future__ import annotations

import logging
import os
import re
import socket

from cejobs.threads import current_nice

DASHBOARD_HOST = "127.0.0.1"  # never expose Ray's dashboard beyond this host


logger = logging.getLogger(__name__)


def log(message: str, level: int = logging.INFO) -> None:
    """One line of the driver's Ray backend, through the `cejobs` logger."""
    logger.log(level, f"ray: {message}")


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


TOKEN_LOGGER = "ray._private.authentication.authentication_token_setup"  # Ray 2.5x-2.6x


class TokenNotice(logging.Filter):
    """Holds back Ray's token-authentication WARNINGs, printed by `ray.init` (in the middle
    of a progress bar, and twice), so that `say` gives the one that matters, once, in our
    words: a cluster without token authentication runs code for anyone who reaches its ports
    (ray/README.md). Ray's "token authentication is enabled" for a private local Ray, which
    nobody else joins, is kept at DEBUG."""

    said = False  # once per process

    def __init__(self):
        super().__init__()
        self.disabled = self.enabled = False

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if not text.startswith("Token authentication is"):
            return True
        self.disabled |= "is disabled" in text
        self.enabled |= "is enabled" in text
        return False

    def say(self, where: str) -> None:
        if self.disabled and not TokenNotice.said:
            TokenNotice.said = True
            log(f"{where} runs without token authentication: anyone who can reach its ports "
                f"can run code on it; set RAY_AUTH_MODE=token on the cluster (ray/README.md)",
                logging.WARNING)
        elif self.enabled:
            logger.debug("ray: token authentication is enabled (token in ~/.ray/auth_token)")


CONNECT_TIMEOUT_S = 15.0  # a cluster whose GCS does not accept a connection by then is unreachable


def gcs_reachable(target: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether something accepts TCP connections at `target` (host:port of a GCS)."""
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


def check_address(address: str | None) -> None:
    """A given address (or RAY_ADDRESS) that does not answer within CONNECT_TIMEOUT_S is one
    line (ConfigError); checked before the store is touched."""
    from cejobs.errors import ConfigError

    given = address or os.environ.get("RAY_ADDRESS") or None
    if given and given not in ("auto", "local") and "://" not in given \
            and not gcs_reachable(given):
        raise ConfigError(f"cannot reach the Ray cluster at {given} within "
                          f"{CONNECT_TIMEOUT_S:.0f} s (check --ray-address / RAY_ADDRESS)")


def connect(address: str | None) -> str:
    """Join the cluster at `address` (else RAY_ADDRESS, as `ray job submit` sets it, else one
    `ray start`ed on this node), or start a private local Ray. Returns what it did.

    Ray itself retries an unreachable address without end, so it is probed first: a given
    address that does not answer within CONNECT_TIMEOUT_S is an error; the last `ray start`
    address recorded on this node (/tmp/ray/ray_current_cluster) that does not answer is a
    leftover of a cluster that is gone, and a private local Ray starts instead.

    Ray has no public call for that record: `canonicalize_bootstrap_address` (ray._private) is
    the one private use, and without it the driver falls back to ray.init's own choice."""
    import ray

    from cejobs.errors import ConfigError

    if ray.is_initialized():
        return "connected"
    given = address or os.environ.get("RAY_ADDRESS") or None
    target = given
    try:  # resolves None the way ray.init will: RAY_ADDRESS, then this node's `ray start`
        from ray._private.services import canonicalize_bootstrap_address

        target = canonicalize_bootstrap_address(given)
    except Exception:  # noqa: BLE001 - private API: fall back to what we were given
        pass
    note = ""
    if target and "://" not in target and not gcs_reachable(target):
        if given:
            raise ConfigError(f"cannot reach the Ray cluster at {given} within "
                              f"{CONNECT_TIMEOUT_S:.0f} s (check --ray-address / RAY_ADDRESS)")
        note = f" (the last `ray start` on this node, {target}, is gone)"
        address, target = "local", None
    # A cluster forwards its workers' output into this driver, i.e. into the job's log.
    notice, token_logger = TokenNotice(), logging.getLogger(TOKEN_LOGGER)
    token_logger.addFilter(notice)
    try:
        # a private Ray runs its workers at the driver's niceness, not Ray's 15 (threads.py)
        local = {} if target else {"_system_config": {"worker_niceness": current_nice()}}
        ray.init(address=address, log_to_driver=target is not None, logging_level="WARNING",
                 include_dashboard=False, dashboard_host=DASHBOARD_HOST, **local)
    except ConnectionError as e:
        raise ConfigError(f"cannot reach the Ray cluster at {target or address}: "
                          f"{one_line(e)} (check --ray-address / RAY_ADDRESS)") from None
    finally:
        token_logger.removeFilter(notice)
    notice.say(f"the Ray cluster at {target}" if target else "the local Ray")
    if not target:
        return "started a local Ray" + note
    return f"joined the cluster at {target}"
