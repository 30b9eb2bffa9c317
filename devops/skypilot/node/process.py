"""The supervised command: its own session, its whole tree stopped.

Its output is copied by :mod:`devops.skypilot.node.output`.

The runner becomes a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``), so a
double-forked daemon of the command is re-parented to the runner instead of
init, and can be found and killed with everything else: no process is left
holding a GPU. The runner reaps every child itself (``waitpid(-1)``), which is
why the command's exit status is taken here and not from ``Popen.wait``.

The command never outlives a runner that dies without stopping it (SIGKILL, the
OOM killer): the kernel SIGKILLs the command when the runner goes
(``PR_SET_PDEATHSIG``), and :mod:`devops.skypilot.node.leftovers` stops the rest
of its tree.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

from devops.skypilot.node.liveness import ProcessStamp
from devops.skypilot.node.output import LineSink, OutputCopy
from devops.skypilot.node.signals import SignalWaker

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
#: SIGKILL is not ignorable, but a fork bomb keeps making new targets.
_KILL_ROUNDS_TIMEOUT = 10.0


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux only). False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


def dies_with_runner() -> Callable[[], None] | None:
    """A ``preexec_fn``: the kernel SIGKILLs the child when the runner dies.

    The "parent" the kernel watches is the thread that forked, so the command must
    be spawned from the main thread (it is: the event loop runs there). The
    function runs between fork and exec while other threads of the runner may hold
    locks, so it takes none: prctl is resolved here, in the parent, and the child
    only makes two system calls.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    runner = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != runner:  # the runner died before prctl took effect
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def own_children() -> list[int]:
    """The runner's children, live or not yet reaped (``/proc/self/task/*/children``;
    empty where the kernel does not offer the file)."""
    pids: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/children") as file:
                pids.extend(int(pid) for pid in file.read().split())
    return pids


class SupervisedProcess:
    """One run of the command, from spawn to an empty process tree."""

    def __init__(self, waker: SignalWaker) -> None:
        self._waker = waker
        self._popen: subprocess.Popen[bytes] | None = None
        self._output: OutputCopy | None = None
        self.returncode: int | None = None
        #: The command's pid and start time, taken right after it started.
        self.stamp: ProcessStamp | None = None

    @property
    def pid(self) -> int:
        assert self._popen is not None, "start() first"
        return self._popen.pid

    def start(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        sink: LineSink | None,
    ) -> None:
        """Spawn the command in its own session (raises OSError if it cannot run)."""
        self._output = OutputCopy(log_path, sink)
        self._popen = subprocess.Popen(
            list(command),
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=dies_with_runner(),
        )
        self.stamp = ProcessStamp.of(self._popen.pid)
        assert self._popen.stdout is not None and self._popen.stderr is not None
        self._output.start(self._popen.stdout, self._popen.stderr)

    def forward(self, signum: int) -> None:
        """Pass a signal on to the command's process group (SIGUSR1: checkpoint now)."""
        if self._popen is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, signum)
            logger.info("skyguard: forwarded %s to the command", signal.Signals(signum).name)

    def reap(self) -> int | None:
        """Reap every exited child (we are their subreaper); the command's return code."""
        self._reap_all()
        return self.returncode

    def _reap_all(self) -> bool:
        """Reap every exited child; True once the runner has no child left (ECHILD)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return True
            if pid == 0:
                return False
            if self._popen is not None and pid == self._popen.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                self._popen.returncode = self.returncode

    def descendants(self) -> list[psutil.Process]:
        """Every live process below the runner (orphans adopted by it included)."""
        try:
            children = psutil.Process().children(recursive=True)
        except psutil.Error:
            return []
        alive = []
        for child in children:
            with contextlib.suppress(psutil.Error):
                if child.status() != psutil.STATUS_ZOMBIE:
                    alive.append(child)
        return alive

    def _signal_tree(self, signum: int) -> None:
        """Signal the command's process group, then every descendant outside it, each
        process once: a second SIGTERM is "force quit" to many training scripts."""
        group = self._popen.pid if self._popen is not None else None
        if group is not None:
            # Also once the leader is reaped: the group lives while any member does,
            # and the kernel signals all of them at once, so a member that forks and
            # exits faster than any listing of processes is still reached. Its id is
            # not reused while a member lives; we stop once no child is left.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signum)
        # Our own children (orphans adopted included) straight from the kernel, in
        # microseconds: one that hops out of the group too is hit before it moves on.
        # An unreaped child's pid cannot be reused, so this never hits a stranger.
        children = own_children()
        for pid in children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(pid) != group:
                    os.kill(pid, signum)
        for process in self.descendants():
            with contextlib.suppress(psutil.Error, ProcessLookupError, PermissionError):
                if process.pid not in children and os.getpgid(process.pid) != group:
                    process.send_signal(signum)  # psutil checks it is still that process

    def _tree_empty(self) -> bool:
        """Nothing below the runner is alive.

        Judged by ``waitpid`` failing with ECHILD, not by a listing of processes: as
        the subreaper, the runner is the parent of every orphan of the command, so
        while any descendant lives the runner has a child; a process that forks and
        exits every few milliseconds can slip through a listing, never through this.
        """
        return self._reap_all()

    def _wait_empty(self, deadline: float) -> bool:
        """Wait until the tree is empty or the deadline passes."""
        while True:
            if self._tree_empty():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # The last exit in the tree is always a SIGCHLD to us (a child of ours,
            # or an orphan re-parented to us): it wakes this wait at once.
            self._waker.wait(min(remaining, 0.5))

    def stop(self, grace: float) -> None:
        """SIGTERM the tree, wait ``grace``, SIGKILL what is left, reap it all."""
        if not self._tree_empty():
            began = time.monotonic()
            logger.info(
                "skyguard: stopping the command's processes with SIGTERM (grace %gs)", grace
            )
            self._signal_tree(signal.SIGTERM)
            if self._wait_empty(began + grace):
                logger.info("skyguard: process tree empty after %.2fs", time.monotonic() - began)
            else:
                logger.warning(
                    "skyguard: processes still alive %gs after SIGTERM; sending SIGKILL", grace
                )
                self.kill()

    def kill(self) -> None:
        """SIGKILL every descendant until none is left (fork bombs included)."""
        deadline = time.monotonic() + _KILL_ROUNDS_TIMEOUT
        while True:
            self._signal_tree(signal.SIGKILL)
            if self._wait_empty(min(deadline, time.monotonic() + 0.2)):
                return
            if time.monotonic() >= deadline:
                logger.error("skyguard: could not kill %s", [p.pid for p in self.descendants()])
                return

    @property
    def log_problem(self) -> str | None:
        """Why the attempt log is incomplete; None if it holds every byte."""
        return self._output.log_problem if self._output is not None else None

    def close(self) -> None:
        """Let the output readers drain, then close the log. Call after :meth:`stop`."""
        if self._output is not None:
            self._output.close()
