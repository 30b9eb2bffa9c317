"""The training side of hang forensics: dump this process's stacks when the runner asks.

Where ptrace is forbidden (a container without ``CAP_SYS_PTRACE``, Yama scope 3)
py-spy cannot read a hung rank's stack. This is the fallback: the heartbeat
client calls :func:`register` once, which points :mod:`faulthandler` at a file in
``$SKYGUARD_FORENSICS_DIR`` for :data:`DUMP_SIGNAL`. On a hang verdict the runner
sends that signal to each process whose file exists; faulthandler writes every
thread's stack from its C signal handler, so a rank blocked in C (a collective,
``time.sleep``, a read) still answers. Standard library only, never raises.
"""

from __future__ import annotations

import faulthandler
import os
import signal
from pathlib import Path
from typing import IO

ENV_DIR = "SKYGUARD_FORENSICS_DIR"
#: SIGUSR1 is taken by some frameworks (Lightning's SLURM requeue); SIGUSR2 rarely is.
DUMP_SIGNAL = signal.SIGUSR2

#: The open file faulthandler writes to; kept so it is never closed under it.
_registered: tuple[int, IO[str]] | None = None


def dump_file(directory: Path, pid: int) -> Path:
    """Where process ``pid`` dumps; its existence means the handler is in place."""
    return directory / f"faulthandler-{pid}.txt"


def register() -> bool:
    """Install the dump handler once per process; True if it is in place."""
    global _registered
    pid = os.getpid()
    if _registered is not None and _registered[0] == pid:
        return True
    raw = os.environ.get(ENV_DIR)
    if not raw:
        return False
    if signal.getsignal(DUMP_SIGNAL) is not signal.SIG_DFL:
        # The program uses SIGUSR2 itself (a checkpoint-on-signal hook): leave it
        # alone. No file is published, so the runner never sends it; py-spy remains.
        return False
    directory = Path(raw)
    temp = directory / f".faulthandler-{pid}.tmp"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        handle = temp.open("w")
        faulthandler.register(DUMP_SIGNAL, file=handle, all_threads=True, chain=False)
        # Published only now: the runner signals a process once its file exists,
        # and before the handler is in place that signal would kill it.
        os.replace(temp, dump_file(directory, pid))
    except (OSError, RuntimeError, ValueError):
        return False
    _registered = (pid, handle)
    return True
