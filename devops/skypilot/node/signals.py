"""Signals wake the runner's loop; they never run logic of their own.

A self-pipe registered with :func:`signal.set_wakeup_fd` turns every signal
(SIGCHLD included) into a readable byte, so the loop sleeps in ``select`` until
the next deadline or the next event, whichever comes first: a child's exit is
seen at once, and an idle runner costs no CPU. Handlers only record which stop
signal came first (the PyTorch elastic / circus pattern).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

#: Signals that mean "stop the job": cancel, preemption, Ctrl-C, lost terminal.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

_Handler = Callable[[int, FrameType | None], Any] | int | None


class SignalWaker:
    """Installs the handlers on enter, restores the previous ones on exit."""

    def __init__(self) -> None:
        self.stop_signal: int | None = None
        self._read_fd = -1
        self._write_fd = -1
        self._previous: dict[int, _Handler] = {}
        self._previous_wakeup_fd = -1

    def __enter__(self) -> SignalWaker:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in (*STOP_SIGNALS, signal.SIGCHLD):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum in STOP_SIGNALS and self.stop_signal is None:
            self.stop_signal = signum

    def wait(self, timeout: float) -> None:
        """Sleep until a signal arrives or ``timeout`` seconds pass."""
        if timeout > 0:
            with contextlib.suppress(InterruptedError):
                select.select([self._read_fd], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read_fd, 512):
                continue
