"""The command's output: copied to ours, appended to the attempt log, fed to the monitors.

One reader thread per stream (stdout, stderr), so a command that fills one pipe
never blocks on the other, and the event loop never blocks on a read. Each thread
moves up to a MiB per read (the pipes are grown to that), and hands the monitors
whole lines a block at a time: a chatty command pays a few system calls per MiB,
not a Python call per line.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

#: One read: the capacity the pipes are grown to (Linux's default limit for anyone).
_READ_SIZE = 1 << 20
#: A "line" longer than this is cut and classified in pieces, so a command
#: that prints without newlines cannot make the runner buffer without bound.
_MAX_LINE = 65536
#: How long to wait for the output pipes to drain after the tree is gone.
_DRAIN_TIMEOUT = 2.0
#: How far the attempt log may fall behind the output: a reader with more queued
#: waits for the log (back-pressure, as ``| tee`` gives), so a slow disk loses no byte
#: and memory stays bounded.
_MAX_BACKLOG = 16 << 20
#: At most this many queued reads are written by one system call (below IOV_MAX).
_MAX_CHUNKS = 64
#: A log that wrote nothing for this long while the backlog was full (a hung bucket
#: mount) is given up: the copy goes on without it, never blocked again.
_STALL = 10.0
#: Kept free beside the attempt log for the termination record (~180 attempts of history).
RESERVE_FILE = ".record-reserve"
RESERVE_BYTES = 65536

#: Takes ``data[start:end]``: whole lines of output joined by newlines (no trailing
#: newline), as the command wrote them: every line completed by one read, or one piece
#: of a line cut at ``_MAX_LINE``. ``data`` is the read itself, uncopied (immutable).
LineSink = Callable[[bytes, int, int], None]


class _Tee(threading.Thread):
    """Copies one output stream of the command to ours, to the log, and to the monitors.

    The bytes are copied as read, in chunks of up to a pipe's capacity; the lines
    are found only for the monitors, a whole chunk's worth at a time (up to its last
    newline), so a chatty command pays a few system calls per MiB, not a call per line.
    """

    def __init__(
        self,
        source: IO[bytes],
        target_fd: int,
        log: AttemptLog,
        sink: LineSink | None,
    ) -> None:
        super().__init__(name=f"skyguard-tee-{target_fd}", daemon=True)
        self._source_fd = source.fileno()
        self._source = source
        self._target_fd = target_fd
        self._log = log
        self._sink = sink
        self._target_open = True
        #: The unfinished last line, kept for the monitors only.
        self._pending = b""

    def run(self) -> None:
        _grow_pipe(self._source_fd)
        try:
            # A fresh bytes object per read, never read into again: the monitors (by
            # bounds), our stdout and the log thread's queue all get this one object,
            # so no byte is copied in Python. (A reused buffer cost a copy for the log's
            # queue and one for the monitors, and a MiB buffer written on every read
            # misses the cache: the read itself cost twice as much.)
            while data := os.read(self._source_fd, _READ_SIZE):
                # The monitors first: a log write stalled on a slow bucket mount (or a
                # slow reader of our stdout) must not keep a fatal line from them past
                # the drain, or a retryable end is decided as the command's own failure.
                if self._sink is not None:
                    self._lines(data)
                self._forward(data)
                self._log.write(data)
            if self._pending and self._sink is not None:
                self._sink(self._pending, 0, len(self._pending))
        except OSError as error:
            logger.warning("skyguard: output reader stopped: %s", error)
        finally:
            self._source.close()

    def _forward(self, data: bytes) -> None:
        if not self._target_open:
            return
        try:
            done = os.write(self._target_fd, data)
            if done < len(data):
                view = memoryview(data)[done:]
                while view:
                    view = view[os.write(self._target_fd, view) :]
        except OSError:
            # Our own stdout went away; keep draining the command so it never blocks.
            self._target_open = False

    def _lines(self, data: bytes) -> None:
        """Hand the monitors every line ``data`` (one read) completes, as spans of whole
        lines given by their bounds in ``data``: nothing is copied but a line begun
        by an earlier read, joined to the read's first line only (or to the rest of a
        piece of ``_MAX_LINE``), never the whole read."""
        sink, pending = self._sink, self._pending
        assert sink is not None
        size, position = len(data), 0
        end = data.rfind(b"\n")
        if end >= 0:
            if pending:
                first = data.find(b"\n")
                joined = pending + data[:first]
                sink(joined, 0, len(joined))
                position = first + 1
            if position <= end:
                sink(data, position, end)
            position = end + 1
        elif pending:
            room = _MAX_LINE - len(pending)
            if size <= room:
                self._pending = pending + data
                return
            joined = pending + data[:room]
            sink(joined, 0, len(joined))
            position = room
        while size - position > _MAX_LINE:
            sink(data, position, position + _MAX_LINE)
            position += _MAX_LINE
        self._pending = data[position:]


def _grow_pipe(fd: int) -> None:
    """A bigger pipe: fewer wake-ups for us, fewer stalls for the command."""
    with contextlib.suppress(OSError, AttributeError):  # not a pipe; not Linux
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _READ_SIZE)


class AttemptLog:
    """``logs/attempt-N.log``, fed by both readers and written by a thread of its own.
    A write that fails (a full disk, EIO from a bucket mount) or stalls (a hung mount)
    ends the log, never the copy: the readers only queue, so the command's output
    still reaches our stdout/stderr, and its lines the monitors, and the log is
    reported incomplete once.

    A small reserve file is kept beside the log while it is written and removed
    when it closes, so a log that filled the disk still leaves room for the record.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)
        self._drained = threading.Condition(self._lock)
        #: When the writer last finished a write (monotonic): progress, or a stall.
        self._progress_at = time.monotonic()
        self._backlog: deque[bytes] = deque()
        self._backlog_bytes = 0
        self._closing = False
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
        self._writer = threading.Thread(target=self._write_out, name="skyguard-log", daemon=True)
        self._writer.start()

    def write(self, chunk: bytes) -> None:
        """Queue ``chunk`` for the log; never raises. Waits while the backlog is full
        and the log still makes progress; a log stalled for ``_STALL`` is given up."""
        with self._lock:
            waiting_since = time.monotonic()
            while self._backlog and self._backlog_bytes + len(chunk) > _MAX_BACKLOG:
                if self.problem is not None or self._closing:
                    break
                stalled = time.monotonic() - max(self._progress_at, waiting_since)
                if stalled >= _STALL:
                    self._fail(f"its storage stalled {self._backlog_bytes} bytes behind")
                    break
                self._drained.wait(_STALL - stalled)
            if self.problem is not None or self._closing:
                return
            self._backlog.append(chunk)
            self._backlog_bytes += len(chunk)
            self._queued.notify()

    def _write_out(self) -> None:
        while True:
            with self._lock:
                while not self._backlog and not self._closing:
                    self._queued.wait()
                if not self._backlog:
                    return
                # Everything queued in one system call: a log that fell behind catches up
                # with one wake-up, not one per read.
                chunks = list(itertools.islice(self._backlog, _MAX_CHUNKS))
            try:
                done = os.writev(self._fd, chunks)
            except OSError as error:
                with self._lock:
                    self._fail(error.strerror or str(error))
                return
            with self._lock:
                self._written += done
                self._progress_at = time.monotonic()
                if self._backlog and self._backlog[0] is chunks[0]:  # not dropped by _fail
                    self._backlog_bytes -= done
                    while done and done >= len(self._backlog[0]):
                        done -= len(self._backlog.popleft())
                    if done:  # a short write (a full disk's last bytes): the rest next
                        self._backlog[0] = self._backlog[0][done:]
                self._drained.notify_all()

    def _fail(self, why: str) -> None:
        """Called with the lock held: the log ends here."""
        if self.problem is not None:
            return
        self._backlog.clear()
        self._backlog_bytes = 0
        self._drained.notify_all()
        self.problem = (
            f"attempt log incomplete: {self.path.name} stops after {self._written} bytes "
            f"({why}); the command's output went on to stdout/stderr"
        )
        logger.warning("skyguard: %s", self.problem)

    def close(self) -> None:
        """Write out what is queued, then close. Bounded: a write that made no progress
        for ``_DRAIN_TIMEOUT`` is given up (a slow disk still gets the whole backlog)."""
        with self._lock:
            self._closing = True
            self._queued.notify()
            self._drained.notify_all()
        while True:
            self._writer.join(_DRAIN_TIMEOUT)
            if not self._writer.is_alive():
                break
            if time.monotonic() - self._progress_at > _DRAIN_TIMEOUT:
                with self._lock:  # stuck in a write: it keeps the descriptor
                    self._fail("its storage stalled")
                break
        if not self._writer.is_alive():
            try:
                os.close(self._fd)  # NFS and FUSE report a failed flush here
            except OSError as error:
                with self._lock:
                    self._fail(error.strerror or str(error))
        with contextlib.suppress(OSError):
            self._reserve.unlink()


class OutputCopy:
    """The command's stdout and stderr, each copied to ours and to the attempt log."""

    def __init__(self, log_path: Path, sink: LineSink | None) -> None:
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
            # Our fds 1 and 2, whatever sys.stdout is (None where we were started with
            # them closed: the CLI's first line puts the null device there).
            _Tee(stdout, 1, self._log, self._sink),
            _Tee(stderr, 2, self._log, self._sink),
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
