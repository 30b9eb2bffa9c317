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
from typing import IO, BinaryIO

logger = logging.getLogger(__name__)

_READ_SIZE = 65536
#: A "line" longer than this is cut and classified in pieces, so a command
#: that prints without newlines cannot make the runner buffer without bound.
_MAX_LINE = 65536
#: How long to wait for the output pipes to drain after the tree is gone.
_DRAIN_TIMEOUT = 2.0

LineSink = Callable[[str], None]


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


class OutputCopy:
    """The command's stdout and stderr, each copied to ours and to the attempt log."""

    def __init__(self, log_path: Path, sink: LineSink) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: BinaryIO = open(log_path, "ab")  # noqa: SIM115 - closed in close()
        self._sink = sink
        self._tees: list[_Tee] = []

    def start(self, stdout: IO[bytes], stderr: IO[bytes]) -> None:
        """Start copying the command's two pipes (their read ends)."""
        lock = threading.Lock()
        self._tees = [
            _Tee(stdout, sys.stdout.fileno(), self._log, lock, self._sink),
            _Tee(stderr, sys.stderr.fileno(), self._log, lock, self._sink),
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
            with contextlib.suppress(OSError):
                self._log.close()
