"""One identity for a host and a process, used by leases, claims and shard results.

HOST@ADDRESS:PID: hosts that share a name (containers, pods, network namespaces) differ by
address, and two processes with the same pid on two such hosts differ by host label.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
from pathlib import Path


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
