"""skyguard's own lines on stdout/stderr, which may be closed under it.

``skyguard run ... 2>&1 | head -1`` closes both after the first line. What the
runner decided (the exit code, the record, the notifications) must not depend on
them: a line that cannot be written is dropped, never raised.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TextIO


def say(line: str, stream: TextIO | None = None) -> bool:
    """Write one line to ``stream`` (default stderr) and flush it; False if it is closed."""
    target = sys.stderr if stream is None else stream
    try:
        target.write(line + "\n")
        target.flush()
    except (OSError, ValueError):  # EPIPE/EIO, or the stream object itself closed
        return False
    return True


def fill_closed_standard_fds() -> None:
    """Put /dev/null on stdin, stdout or stderr where skyguard was started with one
    closed (``skyguard run ... >&-``), before anything else is opened.

    A closed fd 1 is the next file's number: the attempt log (or a pipe to the
    command) would take it, and the command's output copied "to our stdout" would
    land in it. Python leaves ``sys.stdout`` None then; it gets a stream on the null
    device, so nothing of skyguard's trips over a missing stream.
    """
    for fd, name in ((0, "stdin"), (1, "stdout"), (2, "stderr")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free fd: this one
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)  # as a standard fd is: the command gets it too
        if getattr(sys, name) is None:
            mode = "r" if fd == 0 else "w"
            # Lives as long as the process, as sys.stdout does: no context to close it in.
            stream = open(fd, mode, closefd=False, errors="backslashreplace")  # noqa: SIM115
            setattr(sys, name, stream)


def release_closed_streams() -> None:
    """Point a closed stdout/stderr at /dev/null, so that Python's flush at exit
    cannot fail and turn the exit code into 120."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            with contextlib.suppress(OSError, ValueError):
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, stream.fileno())
                os.close(devnull)
