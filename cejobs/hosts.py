"""One identity for a host and a process, used by leases, claims and shard results.

HOST@ADDRESS:PID: hosts that share a name (containers, pods, network namespaces) differ by
address, and two processes with the same pid on two such hosts differ by host label.

A pid names a process only within its pid namespace and its boot, so `process_identity` also
records the pid namespace (the inode of /proc/self/ns/pid) and the boot id: a lease holder's
pid is checked (`holder_gone`) only when both match this process's; otherwise only the
holder's heartbeat says whether it lives.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
from pathlib import Path
from typing import Any, Mapping


def host_address() -> str | None:
    """This host's IPv4 address: the source address of its default route, else its first
    non-loopback local address (Linux's /proc/net/fib_trie, per network namespace)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent, only a route looked up
        return s.getsockname()[0]
    with contextlib.suppress(OSError):
        found = re.findall(r"\|-- (\d+\.\d+\.\d+\.\d+)\n\s+/32 host LOCAL",
                           Path("/proc/net/fib_trie").read_text())
        return next((a for a in found if not a.startswith("127.")), None)
    return None


@functools.cache
def host_label() -> str:
    """HOST@ADDRESS: hosts that share a name (containers, namespaces) differ by address."""
    address = host_address()
    return f"{socket.gethostname()}@{address}" if address else socket.gethostname()


def worker_name() -> str:
    return f"{host_label()}:{os.getpid()}"


@functools.cache
def boot_id() -> str:
    """This boot of this kernel ("" where Linux's /proc does not say)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def pid_namespace() -> str:
    """This process's pid namespace, e.g. "pid:[4026531836]" ("" where /proc does not say)."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_identity() -> dict[str, Any]:
    """Who this process is, as a lease or claim records it: host label, pid, boot, pid
    namespace."""
    return dict(host=host_label(), pid=os.getpid(), boot_id=boot_id(),
                pid_ns=pid_namespace())


def same_pid_space(holder: Mapping[str, Any]) -> bool:
    """Whether `holder`'s pid names a process this one can see: the same host label, boot and
    pid namespace (each known). Two containers that share a hostname and an address differ
    by their pid namespace."""
    return (holder.get("host") == host_label() and bool(boot_id()) and bool(pid_namespace())
            and holder.get("boot_id") == boot_id() and holder.get("pid_ns") == pid_namespace())


def process_gone(pid: int) -> bool:
    """Whether no process `pid` exists in this pid namespace."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


def holder_gone(holder: Mapping[str, Any]) -> bool:
    """Whether the process that `holder` (a `process_identity`) names is known to be gone: it
    ran in this pid space, and its pid no longer exists. False when that can't be known."""
    pid = holder.get("pid")
    return (isinstance(pid, int) and pid > 0 and same_pid_space(holder)
            and process_gone(pid))
