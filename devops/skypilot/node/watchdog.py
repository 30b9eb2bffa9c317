"""The watchdog: stops an attempt's processes when its runner dies without doing it.

Started with every attempt, in a session of its own and not a child of the runner,
it waits on a pipe only the runner writes to. End of file after the runner's
``done`` (the tree is stopped) means nothing to do; end of file without it means
the runner is gone (SIGKILL, the OOM killer), and the watchdog stops every
process of the attempt (:func:`devops.skypilot.node.leftovers.stop`: SIGTERM,
``--grace``, SIGKILL) and exits.

Once the command runs, the runner also writes its pid and start time (``command
PID TICKS``): a process of the command's session that cleared its environment holds
no token, and is found by the session instead. Where the runner made a cgroup for
the attempt (:mod:`devops.skypilot.node.cgroup`) it writes ``cgroup PATH`` first:
every process in it is the attempt's. The watchdog is started before the runner
moves into that cgroup, so it is never in it.

``python -m devops.skypilot.node.watchdog TOKEN GRACE`` is the process. It imports
nothing beyond the standard library until it has to act, so it is ready, and
gone again, within a few tens of milliseconds.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import sys
import time
from collections.abc import Sequence

from devops.skypilot.node.cgroup import AttemptCgroup  # the standard library only

logger = logging.getLogger(__name__)

#: What the runner writes once its tree is stopped: the watchdog has nothing to do.
_DONE = b"done"
#: What precedes the command's pid and start time.
_COMMAND = b"command"
#: What precedes the path of the attempt's cgroup.
_CGROUP = b"cgroup"
#: How long the runner waits for a released watchdog to exit.
_EXIT_WAIT = 2.0


class Watchdog:
    """The runner's side of the watchdog process."""

    def __init__(self, control: int, alive: int) -> None:
        self._control = control
        self._alive = alive
        self._cgroup: AttemptCgroup | None = None

    @classmethod
    def start(cls, token: str, grace: float) -> Watchdog:
        """Start it. Call before the runner becomes a subreaper: the watchdog is
        double-forked into a session of its own, so it is never the runner's child
        (the runner judges its tree empty by having no child) and a signal to the
        runner's process group does not reach it."""
        try:
            control_read, control_write = os.pipe()
            alive_read, alive_write = os.pipe()
            pid = os.fork()
        except OSError as error:  # out of fds or processes: run without one, say so
            logger.warning("skyguard: no watchdog for this attempt: %s", error)
            return cls(-1, -1)
        if pid == 0:  # only system calls from here to exec: other threads may hold locks
            try:
                os.setsid()
                if os.fork() == 0:
                    os.dup2(control_read, 0)
                    os.dup2(alive_write, 1)  # closed when the watchdog exits
                    os.set_inheritable(0, True)  # also where a pipe end already was 0 or 1
                    os.set_inheritable(1, True)
                    argv = [sys.executable, "-m", __name__, token, repr(grace)]
                    os.execv(sys.executable, argv)
            finally:
                os._exit(0)
        os.close(control_read)
        os.close(alive_write)
        os.waitpid(pid, 0)
        return cls(control_write, alive_read)

    def name_command(self, pid: int, start_ticks: int) -> None:
        """The command started: its session is the attempt's too."""
        if self._control < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._control, b"%s %d %d\n" % (_COMMAND, pid, start_ticks))

    def join_cgroup(self, token: str) -> None:
        """Move the runner into a new cgroup of the attempt, where one can be made, and
        tell the watchdog (started before, so never in it): whatever is in it is the
        attempt's. Everything the runner starts from here on is born inside."""
        self._cgroup = AttemptCgroup.join_new(token)
        if self._control >= 0 and self._cgroup is not None:
            with contextlib.suppress(OSError):
                os.write(self._control, b"%s %s\n" % (_CGROUP, os.fsencode(self._cgroup.path)))

    @property
    def cgroup_path(self) -> str:
        """The attempt's cgroup ("" where there is none)."""
        return str(self._cgroup.path) if self._cgroup is not None else ""

    def release(self) -> None:
        """The tree is stopped: the runner leaves its cgroup and removes it, and the
        watchdog has nothing left to do (idempotent)."""
        if self._cgroup is not None:
            self._cgroup.close()
            self._cgroup = None
        if self._control < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._control, _DONE)
        os.close(self._control)
        self._control = -1

    def close(self) -> None:
        """Release it and wait (bounded) until it has exited."""
        self.release()
        if self._alive < 0:
            return
        deadline = time.monotonic() + _EXIT_WAIT
        with contextlib.suppress(OSError):
            while (remaining := deadline - time.monotonic()) > 0:
                readable, _, _ = select.select([self._alive], [], [], remaining)
                if readable and not os.read(self._alive, 64):
                    break
        os.close(self._alive)
        self._alive = -1


def main(argv: Sequence[str]) -> int:
    """The watchdog: wait for the runner's word; without it, stop the attempt."""
    token, grace = argv[0], float(argv[1])
    told = b""
    while chunk := os.read(0, 64):
        told += chunk
    lines = told.split(b"\n")
    if lines[-1] == _DONE:
        return 0
    from devops.skypilot.node.leftovers import stop
    from devops.skypilot.node.liveness import ProcessStamp

    command, cgroup = None, None
    here = ProcessStamp.own()  # the command ran on this host, in this boot
    for line in lines:
        words = line.split()
        if here is not None and len(words) == 3 and words[0] == _COMMAND:
            command = ProcessStamp(here.host, here.boot_id, int(words[1]), int(words[2]))
        if words[:1] == [_CGROUP]:
            cgroup = AttemptCgroup.named(os.fsdecode(line.split(b" ", 1)[1]), token)
    count = stop(token, grace, command, cgroup)
    if count:
        print(
            f"skyguard: the runner died; stopped {count} process(es) of its command",
            file=sys.stderr,
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
