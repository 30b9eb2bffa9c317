"""Children that leave processes behind: fork bombs, double-forked daemons, helpers
slow to stop, pid hoppers, and trees that must not outlive a SIGKILLed runner.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import psutil

from tests.faults.moments import hang, ready, ready_on_sigterm


def fork_bomb(count: str, pid_file: str) -> int:
    """``count`` children that try to outlive the command: half in their own session
    (out of the process group), half ignoring SIGTERM."""
    pids = []
    for index in range(int(count)):
        pid = os.fork()
        if pid == 0:
            if index % 2:
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            else:
                os.setsid()
            time.sleep(3600)
            os._exit(0)
        pids.append(pid)
    Path(pid_file).write_text("\n".join(map(str, pids)))
    return 0


def double_fork(pid_file: str) -> int:
    """Leave a SIGTERM-ignoring daemon behind in its own session, then exit 0."""
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            Path(pid_file + ".tmp").write_text(str(os.getpid()))
            os.replace(pid_file + ".tmp", pid_file)
            time.sleep(3600)
        os._exit(0)
    while not os.path.exists(pid_file):
        time.sleep(0.01)
    return 0


def exit_leaving_helper() -> int:
    """Exit 0 at once, leaving a helper in the process group that is slow to stop."""
    read, write = os.pipe()
    if os.fork() == 0:
        ready_on_sigterm()
        os.write(write, b"1")
        hang()
    os.read(read, 1)
    return 0


def pid_hopper(trail: str, own_session: str = "") -> int:
    """Leave a descendant that forks and exits every 2 ms, so its pid never stays; then
    exit 0. Each generation appends a byte to ``trail``; all give up after 20 s, so a
    leak does not outlive the test by long. ``own_session``: each hop leaves the group."""
    give_up = time.monotonic() + 20
    if os.fork() == 0:
        fd = os.open(trail, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        while time.monotonic() < give_up:
            if os.fork():
                os._exit(0)
            if own_session:
                os.setsid()
            os.write(fd, b".")
            time.sleep(0.002)
        os._exit(0)
    while not os.path.exists(trail):
        time.sleep(0.01)
    return 0


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


#: A process that cleared its environment (``env -i``): it holds no attempt token.
_CLEARED = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"


def leave_tree(pid_file: str, cleared: str = "") -> int:
    """Attempt 2: a tree that ignores SIGTERM (the command, a child in its group, one
    in a session of its own as torchrun's workers, and with ``cleared`` one started
    with an empty environment: in the group, or with ``escaped`` in a session of its
    own too, as ``setsid env -i``), its pids in ``pid_file``; hang. Any later
    attempt: note which of them are alive as it starts, and exit 0."""
    if os.environ["SKYGUARD_ATTEMPT"] != "2":
        alive = [pid for pid in map(int, Path(pid_file).read_text().split()) if _alive(pid)]
        Path(pid_file + ".at-restart").write_text(" ".join(map(str, alive)))
        return 0
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    pids = [os.getpid()]
    for own_session in (False, True):
        pid = os.fork()
        if pid == 0:
            if own_session:
                os.setsid()
            hang()
        pids.append(pid)
    if cleared:
        pid = os.fork()
        if pid == 0:
            if cleared == "escaped":
                os.setsid()
            # The pid file in its command line: the test finds it by that to clean up.
            os.execve(sys.executable, [sys.executable, "-c", _CLEARED, pid_file], {})
        pids.append(pid)
    Path(pid_file + ".tmp").write_text(" ".join(map(str, pids)))
    os.replace(pid_file + ".tmp", pid_file)
    ready()
    hang()
    return 0
