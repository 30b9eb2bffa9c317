"""The monitor extension point.

A monitor looks at one thing and returns a :class:`Verdict` when the job must
stop. It never sleeps, spawns threads or stops anything: the runner owns the
loop, the clock (``time.monotonic()``, passed in as ``now``) and the shutdown.
A monitor that raises is logged and disabled; it does not end the job.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from devops.skypilot.common.termination import Verdict


class Monitor(ABC):
    """Base class of every monitor. Subclasses implement :meth:`check`."""

    #: Seconds between two checks when the monitor has no nearer deadline.
    interval: float = 1.0

    @property
    def name(self) -> str:
        return type(self).__name__

    def start(self, now: float) -> None:  # noqa: B027 - optional hook, empty by design
        """The command has just started at monotonic time ``now``."""

    def next_check(self, now: float) -> float:
        """Monotonic time of the next check; monitors with a deadline return it."""
        return now + self.interval

    @abstractmethod
    def check(self, now: float) -> Verdict | None:
        """A verdict if the job must stop now, else None."""

    def observe_line(self, line: str) -> None:  # noqa: B027 - optional hook, empty by design
        """One line of the command's output (without its newline). Called from the
        runner's reader threads for every line, so it must be cheap and thread-safe."""

    def observe_lines(self, block: str) -> None:
        """Whole lines of the command's output joined by newlines (no trailing one):
        every line one read of a pipe completed, up to a MiB at a time. The default
        hands each to :meth:`observe_line`; a monitor that can search the block as a
        whole (a regular expression runs over it in C) should override this: a
        chatty command prints millions of lines a second."""
        for line in block.split("\n"):
            self.observe_line(line)

    def observe_output(self, block: bytes) -> None:
        """The same block as the command wrote it, undecoded (UTF-8, maybe invalid):
        what the runner calls. The default decodes it (invalid bytes replaced) for
        :meth:`observe_lines`; a monitor that searches bytes skips the decoding."""
        self.observe_lines(str(block, "utf-8", "replace"))

    def observe_span(self, data: bytes, start: int, end: int) -> None:
        """``data[start:end]``, the same block given by its bounds in a read of the pipe:
        what the runner calls. Each read is handed to the monitors and to the attempt
        log as it came, uncopied; the default slices the block out for
        :meth:`observe_output`, a monitor that searches bytes in place skips the copy."""
        self.observe_output(data[start:end])

    @property
    def reads_output(self) -> bool:
        """Whether this monitor looks at the command's output at all."""
        own = type(self)
        return (
            own.observe_line is not Monitor.observe_line
            or own.observe_lines is not Monitor.observe_lines
            or own.observe_output is not Monitor.observe_output
            or own.observe_span is not Monitor.observe_span
        )

    def explain(self) -> Verdict | None:
        """After the command failed on its own: why, if this monitor knows."""
        return None

    def stop(self) -> None:  # noqa: B027 - optional hook, empty by design
        """The attempt is over; release what :meth:`start` took."""
