"""Loopback ports for servers the tests start in other processes (torchrun, a head node).

Binding port 0, reading the number and closing the socket leaves a window
before the server binds it, and the kernel hands out the same range as the
source ports of outgoing connections: any connection made in that window (by
this suite, or by another suite on the same machine) can take the port. So:
ports come from below the kernel's ephemeral range, where it never picks source
ports, and each one is claimed with a lock file that this process holds until
it exits, so no other process using this module takes it meanwhile.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
from pathlib import Path
from typing import IO

#: Below Linux's default ephemeral range (32768-60999) and above the well-known ports.
_LOW, _HIGH = 20000, 32000
_LOCKS = Path(tempfile.gettempdir()) / "skyguard-test-ports"
#: Held for the life of this process: a claimed port stays ours.
_HELD: list[IO[bytes]] = []


def _ephemeral_range() -> range:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return range(int(low), int(high) + 1)
    except (OSError, ValueError):
        return range(32768, 61000)


def reserve_port() -> int:
    """A loopback TCP port that is free now and that no other user of this module gets."""
    _LOCKS.mkdir(exist_ok=True)
    ephemeral = _ephemeral_range()
    candidates = [port for port in range(_LOW, _HIGH) if port not in ephemeral]
    random.shuffle(candidates)
    for port in candidates:
        handle = (_LOCKS / str(port)).open("wb")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue  # another process holds it
        if _bindable(port):
            _HELD.append(handle)
            return port
        handle.close()  # something outside this module listens there
    raise RuntimeError(f"no free loopback port in {_LOW}-{_HIGH} (pid {os.getpid()})")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
