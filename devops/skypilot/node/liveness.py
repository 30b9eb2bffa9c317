"""Whether the process a state file names is still that very process.

A pid alone names nothing for long: after a reboot, a recovery onto another
machine, or just enough forks, the same number belongs to some other process (a
shell whose command line happens to say "skyguard", the new runner's own parent).
A :class:`ProcessStamp` adds what a reused pid cannot share: the machine (host
name and boot id) and the process's start time in clock ticks since boot (field 22
of ``/proc/<pid>/stat``), which, unlike a wall-clock start time, no NTP step moves.
"""

from __future__ import annotations

import contextlib
import functools
import os
import socket
from dataclasses import dataclass
from pathlib import Path

BOOT_ID_FILE = Path("/proc/sys/kernel/random/boot_id")


@functools.cache
def boot_id() -> str:
    """This boot of this machine ('' where the kernel does not say)."""
    with contextlib.suppress(OSError):
        return BOOT_ID_FILE.read_text(encoding="ascii").strip()
    return ""


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in ticks since boot) of ``pid``, or None if gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    fields = text[text.rfind(")") + 2 :].split()
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


@dataclass(frozen=True)
class ProcessStamp:
    """One process on one machine during one boot."""

    host: str
    boot_id: str
    pid: int
    #: Start time in clock ticks since boot; 0 = unknown (never matches).
    start_ticks: int

    @classmethod
    def of(cls, pid: int) -> ProcessStamp | None:
        """The stamp of a running process, or None if it cannot be read."""
        stat = _stat(pid)
        if stat is None:
            return None
        return cls(socket.gethostname(), boot_id(), pid, stat[1])

    @classmethod
    def own(cls) -> ProcessStamp | None:
        return cls.of(os.getpid())

    def alive(self) -> bool:
        """Whether this very process still runs here (a zombie has ended)."""
        if self.start_ticks <= 0 or self.pid <= 0:
            return False
        if (self.host, self.boot_id) != (socket.gethostname(), boot_id()):
            return False
        stat = _stat(self.pid)
        return stat is not None and stat[0] not in ("Z", "X") and stat[1] == self.start_ticks
