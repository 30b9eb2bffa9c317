"""Signals wake the runner's loop; they never run logic of their own.

A self-pipe registered with :func:`signal.set_wakeup_fd` turns every signal
(SIGCHLD included) into a readable byte, so the loop sleeps in ``select`` until
the next deadline or the next event, whichever comes first: a child's exit is
seen at once, and an idle runner costs no CPU. Handlers only record which stop
signals came, in order (the PyTorch elastic / circus pattern); the runner
decides which of them counts.

SIGUSR1 and SIGUSR2 are not stop signals: they are passed on to the command's
process group (checkpoint-on-signal). ``skyguard run`` installs the handlers on the
first line of its ``main`` and
keeps them to the last, so a signal during start-up or during the ending
(notifications, the coordination linger) is recorded like any other, never a
143, a 129 or a KeyboardInterrupt traceback.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

#: What a cancel or a preemption sends (and Ctrl-C, a lost terminal).
CANCEL_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
#: Every catchable signal whose default action would kill the runner outright, with
#: no record and the command orphaned: each ends the attempt as ``signalled``. Not
#: here: SIGUSR1/2 (forwarded), SIGPIPE and SIGXFSZ (Python ignores them: errors
#: instead), and the faults a handler cannot survive (SIGSEGV, SIGBUS, SIGILL,
#: SIGFPE, SIGTRAP, SIGSYS, SIGABRT).
STOP_SIGNALS = (
    *CANCEL_SIGNALS,
    signal.SIGQUIT,
    signal.SIGALRM,
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGXCPU,
    signal.SIGIO,
    signal.SIGPWR,
    *range(signal.SIGRTMIN, signal.SIGRTMAX + 1),
)
#: Passed on to the command's process group while it runs: checkpoint-on-signal
#: setups (Slurm's ``--signal=USR1@N``) rely on it.
FORWARDED_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)

_Handler = Callable[[int, FrameType | None], Any] | int | None


class SignalWaker:
    """Installs the handlers on enter, restores the previous ones on exit."""

    def __init__(self) -> None:
        #: Every stop signal received, oldest first.
        self.received: list[int] = []
        #: Signals to forward to the command, not yet taken.
        self._to_forward: list[int] = []
        self._read_fd = -1
        self._write_fd = -1
        self._previous: dict[int, _Handler] = {}
        self._previous_wakeup_fd = -1
        self._ignore_on_exit = False

    def ignore_stop_signals_on_exit(self) -> None:
        """On exit, ignore the stop signals instead of restoring their handlers.

        For the last moments of ``skyguard run``, once its exit code is decided: on
        Slurm another node's exit brings every node a SIGTERM, and one that lands
        between the handlers' restoration and the process's exit would turn the
        decided code into a death by SIGTERM (srun then reports 143). Swapping a
        handler for SIG_IGN leaves no moment with the default action.
        """
        self._ignore_on_exit = True

    def stop_signal(self) -> int | None:
        """The first stop signal received, if any."""
        return self.received[0] if self.received else None

    def __enter__(self) -> SignalWaker:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for signum in (*STOP_SIGNALS, *FORWARDED_SIGNALS, signal.SIGCHLD):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for signum, previous in self._previous.items():
            ignore = self._ignore_on_exit and signum in STOP_SIGNALS
            signal.signal(signum, signal.SIG_IGN if ignore else previous)
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        for fd in (self._read_fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if signum in STOP_SIGNALS:
            self.received.append(signum)
        elif signum in FORWARDED_SIGNALS:
            self._to_forward.append(signum)

    def take_forwarded(self) -> list[int]:
        """The signals to forward that came since the last call, oldest first."""
        taken, self._to_forward = self._to_forward, []
        return taken

    def wait(self, timeout: float) -> None:
        """Sleep until a signal arrives (or :meth:`wake` is called) or ``timeout`` seconds pass."""
        if timeout > 0:
            with contextlib.suppress(InterruptedError):
                select.select([self._read_fd], [], [], timeout)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read_fd, 512):
                continue

    def wake(self) -> None:
        """Wake :meth:`wait` from another thread."""
        with contextlib.suppress(OSError):
            os.write(self._write_fd, b"\0")

    def run_hurried(self, work: Callable[[], None], hurry: float) -> bool:
        """Run ``work`` in a thread and wait for it; once a stop signal comes, wait at
        most ``hurry`` seconds more. True if it finished.

        For the ending: the decision is made and recorded, what is left (notifications,
        the coordination linger) is bounded by its own deadlines, and a signal now
        (a second cancel, Ctrl-C again) asks to be quicker, not to change the code.
        """
        done = threading.Event()

        def run() -> None:
            try:
                work()
            finally:
                done.set()
                self.wake()

        try:
            threading.Thread(target=run, name="skyguard-ending", daemon=True).start()
        except RuntimeError:  # no thread to spare: wait for it all
            run()
            return True
        seen = len(self.received)
        deadline = math.inf
        while not done.is_set():
            now = time.monotonic()
            if deadline == math.inf and len(self.received) > seen:
                deadline = now + hurry
            if now >= deadline:
                return False
            self.wait(min(deadline - now, 3600.0))
        return True
