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
