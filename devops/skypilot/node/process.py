"""The supervised command: its own session, its output teed, its whole tree stopped.

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
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, BinaryIO

import psutil

from devops.skypilot.node.signals import SignalWaker

logger = logging.getLogger(__name__)

_PR_SET_CHILD_SUBREAPER = 36
_READ_SIZE = 65536
#: A "line" longer than this is cut and classified in pieces, so a command
#: that prints without newlines cannot make the runner buffer without bound.
_MAX_LINE = 65536
#: How long to wait for the output pipes to drain after the tree is gone.
_DRAIN_TIMEOUT = 2.0
#: SIGKILL is not ignorable, but a fork bomb keeps making new targets.
_KILL_ROUNDS_TIMEOUT = 10.0

LineSink = Callable[[str], None]


def become_subreaper() -> bool:
    """Adopt orphaned descendants (Linux only). False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)


class _Tee(threading.Thread):
    """Copies one output stream of the command to ours and to the log file."""

    def __init__(
        self,
        source: IO[bytes],
        target_fd: int,
        log: BinaryIO,
        log_lock: threading.Lock,
        sink: LineSink,
    ) -> None:
        super().__init__(name=f"skyguard-tee-{target_fd}", daemon=True)
        self._source_fd = source.fileno()
        self._source = source
        self._target_fd = target_fd
        self._log = log
        self._log_lock = log_lock
        self._sink = sink
        self._target_open = True

    def run(self) -> None:
        pending = b""
        try:
            while chunk := os.read(self._source_fd, _READ_SIZE):
                self._forward(chunk)
                pending = self._classify(pending + chunk)
            if pending:
                self._sink(pending.decode("utf-8", "replace"))
        except OSError as error:
            logger.warning("skyguard: output reader stopped: %s", error)
        finally:
            self._source.close()

    def _forward(self, chunk: bytes) -> None:
        if self._target_open:
            try:
                view = memoryview(chunk)
                while view:
                    view = view[os.write(self._target_fd, view) :]
            except OSError:
                # Our own stdout went away; keep draining the command so it never blocks.
                self._target_open = False
        with self._log_lock:
            self._log.write(chunk)

    def _classify(self, data: bytes) -> bytes:
        *lines, rest = data.split(b"\n")
        for line in lines:
            self._sink(line.decode("utf-8", "replace"))
        while len(rest) > _MAX_LINE:
            self._sink(rest[:_MAX_LINE].decode("utf-8", "replace"))
            rest = rest[_MAX_LINE:]
        return rest


class SupervisedProcess:
    """One run of the command, from spawn to an empty process tree."""

    def __init__(self, waker: SignalWaker) -> None:
        self._waker = waker
        self._popen: subprocess.Popen[bytes] | None = None
        self._tees: list[_Tee] = []
        self._log: BinaryIO | None = None
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
        sink: LineSink,
    ) -> None:
        """Spawn the command in its own session (raises OSError if it cannot run)."""
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self._popen = subprocess.Popen(
            list(command),
            env=dict(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        lock = threading.Lock()
        assert self._popen.stdout is not None and self._popen.stderr is not None
        self._tees = [
            _Tee(self._popen.stdout, sys.stdout.fileno(), self._log, lock, sink),
            _Tee(self._popen.stderr, sys.stderr.fileno(), self._log, lock, sink),
        ]
        for tee in self._tees:
            tee.start()

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

    def close(self) -> None:
        """Let the output readers drain, then close the log. Call after :meth:`stop`."""
        for tee in self._tees:
            tee.join(_DRAIN_TIMEOUT)
        if any(tee.is_alive() for tee in self._tees):
            logger.warning("skyguard: output still open after the tree was stopped; not waiting")
        elif self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
