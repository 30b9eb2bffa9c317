"""The command's output: copied to ours, appended to the attempt log, fed to the monitors.

One reader thread per stream (stdout, stderr), so a command that fills one pipe
never blocks on the other, and the event loop never blocks on a read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

_READ_SIZE = 65536
#: A "line" longer than this is cut and classified in pieces, so a command
#: that prints without newlines cannot make the runner buffer without bound.
_MAX_LINE = 65536
#: How long to wait for the output pipes to drain after the tree is gone.
_DRAIN_TIMEOUT = 2.0
#: Kept free beside the attempt log for the termination record (~180 attempts of history).
RESERVE_FILE = ".record-reserve"
RESERVE_BYTES = 65536

LineSink = Callable[[str], None]


class _Tee(threading.Thread):
    """Copies one output stream of the command to ours and to the log file."""

    def __init__(
        self,
        source: IO[bytes],
        target_fd: int,
        log: AttemptLog,
        sink: LineSink,
    ) -> None:
        super().__init__(name=f"skyguard-tee-{target_fd}", daemon=True)
        self._source_fd = source.fileno()
        self._source = source
        self._target_fd = target_fd
        self._log = log
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
        self._log.write(chunk)

    def _classify(self, data: bytes) -> bytes:
        *lines, rest = data.split(b"\n")
        for line in lines:
            self._sink(line.decode("utf-8", "replace"))
        while len(rest) > _MAX_LINE:
            self._sink(rest[:_MAX_LINE].decode("utf-8", "replace"))
            rest = rest[_MAX_LINE:]
        return rest


class AttemptLog:
    """``logs/attempt-N.log``, written by both readers. A write that fails (a full
    disk, EIO from a bucket mount) ends the log, never the copy: the command's
    output still reaches our stdout/stderr, and the log is reported incomplete once.

    A small reserve file is kept beside the log while it is written and removed
    when it closes, so a log that filled the disk still leaves room for the record.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()
        self._written = 0
        #: Why the log is incomplete; None while it holds every byte.
        self.problem: str | None = None
        self._reserve = path.parent / RESERVE_FILE
        try:
            with open(self._reserve, "wb") as reserve:
                os.posix_fallocate(reserve.fileno(), 0, RESERVE_BYTES)
        except OSError:
            # Already full, or unsupported: the record may then fail to write (and says so).
            with contextlib.suppress(OSError):
                self._reserve.unlink()

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; never raises."""
        with self._lock:
            if self._fd is None or self.problem is not None:
                return
            view = memoryview(chunk)
            try:
                while view:
                    done = os.write(self._fd, view)
                    self._written += done
                    view = view[done:]
            except OSError as error:
                self._fail(error)

    def _fail(self, error: OSError) -> None:
        self.problem = (
            f"attempt log incomplete: {self.path.name} stops after {self._written} bytes "
            f"({error.strerror or error}); the command's output went on to stdout/stderr"
        )
        logger.warning("skyguard: %s", self.problem)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                try:
                    os.close(self._fd)  # NFS and FUSE report a failed flush here
                except OSError as error:
                    if self.problem is None:
                        self._fail(error)
                self._fd = None
        with contextlib.suppress(OSError):
            self._reserve.unlink()


class OutputCopy:
    """The command's stdout and stderr, each copied to ours and to the attempt log."""

    def __init__(self, log_path: Path, sink: LineSink) -> None:
        self._log = AttemptLog(log_path)
        self._sink = sink
        self._tees: list[_Tee] = []

    @property
    def log_problem(self) -> str | None:
        """Why the attempt log is incomplete; None if it holds every byte."""
        return self._log.problem

    def start(self, stdout: IO[bytes], stderr: IO[bytes]) -> None:
        """Start copying the command's two pipes (their read ends)."""
        self._tees = [
            _Tee(stdout, sys.stdout.fileno(), self._log, self._sink),
            _Tee(stderr, sys.stderr.fileno(), self._log, self._sink),
        ]
        for tee in self._tees:
            tee.start()

    def close(self) -> None:
        """Let the readers drain, then close the log. Call once the tree is stopped."""
        for tee in self._tees:
            tee.join(_DRAIN_TIMEOUT)
        if any(tee.is_alive() for tee in self._tees):
            logger.warning("skyguard: output still open after the tree was stopped; not waiting")
        else:
            self._log.close()
