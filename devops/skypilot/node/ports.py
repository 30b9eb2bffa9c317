"""A port to listen on, free now and outside the kernel's ephemeral range.

``bind(("", 0))`` hands out a port from the ephemeral range, where any outgoing
connection on the machine may take it between our check and the real listener's
bind (torchrun's store, the preflight's rendezvous), so a rendezvous fails now and
then. Below that range only another listener can take a port, and picking at random
keeps two concurrent callers apart.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

#: Linux's default ``net.ipv4.ip_local_port_range`` starts here.
DEFAULT_EPHEMERAL_LOW = 32768
LOWEST = 10000
TRIES = 200


def ephemeral_low(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_EPHEMERAL_LOW


def free_listen_port(host: str = "127.0.0.1", low: int = LOWEST, high: int | None = None) -> int:
    """A port in ``[low, high)`` nothing is bound to now; ``high``: the ephemeral range's start."""
    high = high if high is not None else max(ephemeral_low(), low + 1000)
    for _ in range(TRIES):
        port = random.randrange(low, high)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port in {low}..{high - 1} on {host}")
