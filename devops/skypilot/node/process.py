"""The supervised command: its own session, its whole tree stopped.

Its output is copied by :mod:`devops.skypilot.node.output`.

The runner becomes a child subreaper (Linux ``PR_SET_CHILD_SUBREAPER``), so a
double-forked daemon of the command is re-parented to the runner instead of
init, and can be found and killed with everything else: no process is left
holding a GPU. The runner reaps every child itself (``waitpid(-1)``), which is
why the command's exit status is taken here and not from ``Popen.wait``.
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
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from devops.skypilot.node.output import LineSink, OutputCopy
from devops.skypilot.node.signals import SignalWaker

logger = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
#: SIGKILL is not ignorable, but a fork bomb keeps making new targets.
_KILL_ROUNDS_TIMEOUT = 10.0


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux only). False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


class SupervisedProcess:
    """One run of the command, from spawn to an empty process tree."""

    def __init__(self, waker: SignalWaker) -> None:
        self._waker = waker
        self._popen: subprocess.Popen[bytes] | None = None
        self._output: OutputCopy | None = None
        self.returncode: int | None = None

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
        )
        assert self._popen.stdout is not None and self._popen.stderr is not None
        self._output.start(self._popen.stdout, self._popen.stderr)

    def reap(self) -> int | None:
        """Reap every exited child (we are their subreaper); the command's return code."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if self._popen is not None and pid == self._popen.pid:
                self.returncode = os.waitstatus_to_exitcode(status)
                self._popen.returncode = self.returncode
        return self.returncode

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
        if self._popen is not None and self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._popen.pid, signum)
        for process in self.descendants():
            with contextlib.suppress(psutil.Error):
                process.send_signal(signum)

    def _tree_empty(self) -> bool:
        """The command is reaped and nothing below the runner is alive."""
        command_done = self._popen is None or self.reap() is not None
        return command_done and not self.descendants()

    def _wait_empty(self, deadline: float) -> bool:
        """Wait until the tree is empty or the deadline passes."""
        while True:
            if self._tree_empty():
                return True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            # SIGCHLD wakes us for our own children; grandchildren dying under a
            # live parent send no signal to us, hence the short poll.
            self._waker.wait(min(remaining, 0.05))

    def stop(self, grace: float) -> None:
        """SIGTERM the tree, wait ``grace``, SIGKILL what is left, reap it all."""
        if not self._tree_empty():
            began = time.monotonic()
            logger.info(
                "skyguard: stopping %d process(es) with SIGTERM (grace %gs)",
                len(self.descendants()),
                grace,
            )
            self._signal_tree(signal.SIGTERM)
            if self._wait_empty(began + grace):
                logger.info("skyguard: process tree empty after %.2fs", time.monotonic() - began)
            else:
                logger.warning(
                    "skyguard: %d process(es) still alive %gs after SIGTERM; sending SIGKILL",
                    len(self.descendants()),
                    grace,
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
